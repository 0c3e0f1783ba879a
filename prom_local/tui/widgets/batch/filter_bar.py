"""Shows which rows the table shows; the keys that change it are the batch screen's."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ....reports.absolute import RowFilter


class FilterBar(Static):
    DEFAULT_CSS = "FilterBar { height: 1; }"

    def show(self, row_filter: RowFilter, shown: int, total: int) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("showing ", style="dim")
        text.append(row_filter.describe(), style="bold yellow" if row_filter.active else "bold")
        text.append(f"  {shown}/{total}", style="dim")
        text.append("   a all · 1-5 score · d disagree · e errors", style="dim")
        self.update(text)
