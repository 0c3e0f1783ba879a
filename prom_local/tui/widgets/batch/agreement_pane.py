"""Agreement with gold and the gold-vs-predicted heatmap, drawn by report_view from the
figures of reports/absolute.py and reports/pairwise.py: the same numbers `prom-local report` prints."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from ....reports.absolute import summarise
from ....reports.pairwise import summarise_relative
from ....reports.views import file_view


class AgreementPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static(Text("Open a file to see agreement figures.", style="dim"), id="agreement")

    def show(self, rows: list[dict]) -> None:
        graded = [r for r in rows if not r.get("pending")]
        if not graded:
            self.query_one("#agreement", Static).update(Text("Nothing graded yet.", style="dim"))
            return
        view = file_view(summarise(graded), summarise_relative(graded), compact=True)
        self.query_one("#agreement", Static).update(view)
