"""Pick another model from the store (or type a GGUF path); the app loads it in a worker."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from ...engine.model_info import ModelInfo, human_size


class ModelPickerScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, entries: list[dict], store: Path, current: ModelInfo | None,
                 error: str | None = None) -> None:
        super().__init__()
        self.entries = entries
        self.store = store
        self.current = current
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog models"):
            yield Label("Switch model", classes="dialog-title")
            if self.current is not None:
                yield Static(Text.assemble(("now: ", "dim"), (self.current.name, "bold"),
                                           f" {self.current.quant or '?'} · {self.current.offload}"))
            options = []
            for entry in self.entries:
                spec = f"{entry['name']}:{entry['quant']}"
                mark = "● " if self.current is not None and Path(entry["path"]) == self.current.path else "  "
                options.append(Option(Text.assemble(mark, (spec, "bold"), f"  {human_size(entry['size'])}"),
                                      id=spec))
            if options:
                yield OptionList(*options, id="model-list")
            else:
                yield Static(Text(f"The model store ({self.store}) has no GGUF files yet: get one with "
                                  "`prom-local pull` or `prom-local convert`, or type a path below.",
                                  style="yellow"))
            if self.error:
                yield Static(Text(self.error, style="red"))
            yield Input(placeholder="or a .gguf path / store name, then Enter", id="model-path")
            yield Static("Enter loads · Esc cancels", classes="dim")

    def on_mount(self) -> None:
        target = self.query("#model-list")
        (target.first() if target else self.query_one("#model-path", Input)).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.dismiss(event.value.strip())
