"""A results row's kind, asked in one place.

Rows are the results file's JSON objects, not records: a pairwise row carries "mode": "relative"
(the results contract), an absolute row no "mode". `kind_of` is the one test of that (it lives
where a row is read back into a Grade, and is handed on here); the reports take the rows of one
kind with `of_kind`, and a shell that draws rows (the TUI) looks its drawing up by `kind_of`
instead of testing the row again.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..judging.grades import ABSOLUTE, RELATIVE, kind_of  # noqa: F401  (handed on to the TUI and compare)
from ..judging.rubrics import SCORES


def of_kind(rows: Iterable[dict], kind: str) -> list[dict]:
    return [row for row in rows if kind_of(row) == kind]


def _absolute_disagrees(row: dict) -> bool:
    gold, score = row.get("gold_score"), row.get("score")
    return gold in SCORES and score in SCORES and gold != score


def _relative_disagrees(row: dict) -> bool:
    # A tie (inconsistent orders) with a gold winner is a wrong verdict too.
    gold = row.get("gold_winner")
    return gold in ("A", "B") and not row.get("error") and row.get("winner") != gold


_DISAGREES: dict[str, Callable[[dict], bool]] = {ABSOLUTE: _absolute_disagrees, RELATIVE: _relative_disagrees}


def is_disagreement(row: dict) -> bool:
    """The row's verdict differs from its gold one (a score, or a pair's winner)."""
    return _DISAGREES[kind_of(row)](row)
