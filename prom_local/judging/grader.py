"""One interface for grading one kind of record, so that a record's kind is decided once.

`Judge.grader_for(record)` picks the Grader (absolute: judge.AbsoluteGrader; pairwise:
pairwise.PairJudge); everything after that asks the grader: which engine requests the record needs,
the row from what they ended with, the error row when the engine could not run them.
"""

from __future__ import annotations

import threading
from typing import Protocol, Sequence

from ..engine import GenOutput, GenRequest
from .grading import Grade


class Grader(Protocol):
    def request(self, record, *, cancel: threading.Event | None = None,
                samples: int | None = None) -> GenRequest:
        """The request for the record's prompt (`samples` outputs of it where the kind has samples)."""
        ...

    def requests(self, record, *, both_orders: bool = False,
                 cancel: threading.Event | None = None) -> list[GenRequest]:
        """Every request the record needs (a pair graded in both orders needs two)."""
        ...

    def to_grade(self, record, out: GenOutput) -> Grade:
        """The row of one output."""
        ...

    def row(self, record, results: Sequence[Sequence[GenOutput]]) -> Grade:
        """The record's row from its requests' outputs (one list of samples per request)."""
        ...

    def failed(self, record, error: Exception) -> Grade:
        """The error row of a record the engine could not run (a prompt too long for the context)."""
        ...
