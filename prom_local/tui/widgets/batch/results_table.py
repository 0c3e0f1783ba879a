"""The results table: one row per record, in input order, updated in place as results arrive."""

from __future__ import annotations

import re

from rich.text import Text
from textual.widgets import DataTable

from ....reports.rows import ABSOLUTE, RELATIVE, is_disagreement, kind_of
from ....reports.pairwise import verdict

COLUMNS = (("id", "id"), ("score", "score"), ("gold", "gold"), ("forced", "forced"), ("error", "error"))
WIDTHS = {"id": 8, "score": 5, "gold": 4, "forced": 6, "error": 14}
# "path/in.jsonl:7: field 'response': is empty" -> "field 'response': is empty": the table has
# room for what went wrong; the detail pane shows where.
WHERE = re.compile(r"^.*?:\d+: ")


def short_error(error: str) -> str:
    first = error.splitlines()[0] if error else ""
    return WHERE.sub("", first, count=1)


def cells(row: dict) -> list[Text]:
    return _CELLS[kind_of(row)](row)


def absolute_cells(row: dict) -> list[Text]:
    score, gold = row.get("score"), row.get("gold_score")
    if row.get("pending"):
        score_cell = Text("·", style="dim")
    elif score is None:
        score_cell = Text("-", style="red")
    else:
        style = "bold red" if is_disagreement(row) else ("bold green" if gold is not None else "bold")
        score_cell = Text(str(score), style=style)
    return _row_cells(row, score_cell, gold)


def relative_cells(row: dict) -> list[Text]:
    """A pairwise row in the same columns: the winner (A, B, or tie when the two orders
    disagreed) where a score goes, the gold winner under gold."""
    gold = row.get("gold_winner")
    shown = verdict(row)
    if shown == "none":
        winner = Text("-", style="red")
    else:
        winner = Text(shown, style="bold red" if is_disagreement(row)
                      else ("bold green" if gold is not None else "bold"))
    return _row_cells(row, winner, gold)


_CELLS = {ABSOLUTE: absolute_cells, RELATIVE: relative_cells}


def _row_cells(row: dict, verdict_cell: Text, gold) -> list[Text]:
    """The table's columns: id, the verdict (a score or a winner), its gold, forced, the error."""
    error = row.get("error") or ""
    return [
        Text(str(row.get("id")), overflow="ellipsis", no_wrap=True),
        verdict_cell,
        Text("-" if gold is None else str(gold), style="dim" if gold is None else ""),
        Text("forced", style="yellow") if row.get("forced") else Text(""),
        Text(short_error(error), style="red", no_wrap=True, overflow="ellipsis"),
    ]


class ResultsTable(DataTable):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._shown: list[dict] = []
        self._error_width = WIDTHS["error"]
        self._add_columns()

    def _add_columns(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key, width=self._error_width if key == "error" else WIDTHS[key])

    def on_resize(self) -> None:
        # The error column takes whatever the fixed columns leave, so the table never needs a
        # horizontal scrollbar (DataTable columns do not stretch by themselves).
        fixed = sum(w for k, w in WIDTHS.items() if k != "error")
        spare = self.size.width - fixed - 2 * self.cell_padding * len(COLUMNS) - 1   # 1: scrollbar
        width = max(6, spare)
        if width != self._error_width:
            self._error_width = width
            self.clear(columns=True)
            self._add_columns()
            self.show_rows(self._shown)

    def show_rows(self, rows: list[dict]) -> None:
        """Replace the rows, keeping the cursor on the same record when it is still shown."""
        current = self.current_key()
        self._shown = list(rows)
        self.clear()
        for row in rows:
            self.add_row(*cells(row), key=str(row["id"]))
        if current is not None and current in self.rows:
            self.move_cursor(row=self.get_row_index(current), animate=False)

    def update_row(self, row: dict) -> bool:
        """Update a shown row in place; False when the row is not in the table."""
        key = str(row["id"])
        if key not in self.rows:
            return False
        for (column, _), value in zip(COLUMNS, cells(row)):
            self.update_cell(key, column, value)
        self._shown = [row if str(r["id"]) == key else r for r in self._shown]
        return True

    def current_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None
