"""Ask for a name to save the current rubric under."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from ...errors import PromLocalError
from ...store.user_rubrics import check_name, rubrics_file


class SaveRubricScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Save rubric as", classes="dialog-title")
            yield Input(placeholder="name, e.g. 요약 품질", id="rubric-name")
            yield Static(f"Saved to {rubrics_file()}", classes="dim")
            yield Static("", id="rubric-name-error", classes="error")
            yield Static("Enter saves · Esc cancels", classes="dim")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            name = check_name(event.value)
        except PromLocalError as exc:
            self.query_one("#rubric-name-error", Static).update(str(exc))
            return
        self.dismiss(name)
