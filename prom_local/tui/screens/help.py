"""Every key, listed from the bindings themselves so the help can never go stale."""

from __future__ import annotations

from typing import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# Keys the text fields and tables provide themselves (Textual's), worth knowing.
FIELD_KEYS = (
    ("tab / shift+tab", "next / previous field"),
    ("ctrl+c / ctrl+x / ctrl+v", "copy / cut / paste"),
    ("ctrl+z / ctrl+y", "undo / redo"),
    ("ctrl+a / ctrl+e", "start / end of line"),
    ("↑ ↓ pgup pgdn", "move in a table or the feedback"),
)


def bindings_table(bindings, key_display: Callable[[Binding], str]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("key", style="bold cyan", no_wrap=True)
    table.add_column("does")
    for binding in bindings:
        if isinstance(binding, tuple):   # FIELD_KEYS: already written for people
            table.add_row(*binding)
            continue
        # One row per binding, its keys written the way the footer writes them.
        keys = [Binding(k.strip(), binding.action) for k in binding.key.split(",")]
        # The tooltip, where a binding has one, says more than its short footer label.
        table.add_row(" / ".join(key_display(k) for k in keys),
                      binding.tooltip or binding.description or binding.action)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close help")]

    def __init__(self, sections: list[tuple[str, str, list]]) -> None:
        """sections: (title, one-line description, bindings)."""
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Static(Text("prom-local keys  (Esc closes)", style="bold"), classes="dialog-title")
            for title, about, bindings in self.sections:
                yield Static(Text(title, style="bold"), classes="help-title")
                if about:
                    yield Static(Text(about, style="dim"), classes="help-about")
                yield Static(bindings_table(bindings, self.app.get_key_display), classes="help-section")
            yield Static(Text("In text fields and tables", style="bold"), classes="help-title")
            yield Static(bindings_table(FIELD_KEYS, self.app.get_key_display), classes="help-section")
