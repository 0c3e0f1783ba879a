"""One Grader per kind of record, so that a record's kind is decided once.

`Judge.grader_for(record)` picks the Grader (AbsoluteGrader here; pairwise.PairGrader for pairs);
everything after that asks the grader: which engine requests the record needs, the row from what
they ended with, the error row when the engine could not run them. Both read verdicts with the one
verdicts.VerdictReader, configured for their kind; they differ only in what a record asks of the
engine (samples of one prompt, or a pair's one or two orders) and how those outputs make one row.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Protocol, Sequence

from ..engine import GenOutput, GenRequest, LlamaModel, SamplingParams
from .grades import Grade, error_row
from .prompts import PromptProfile
from .records import Record
from .verdicts import VerdictReader


class JudgeParts(Protocol):
    """What a Grader takes from its Judge. A protocol, not an import of judge.py: the Judge makes
    its graders, so judge.py imports the graders and not the other way round."""
    profile: PromptProfile
    model: LlamaModel
    sampling: SamplingParams
    scores: VerdictReader   # the Judge's reader of absolute scores

    def tokenize_prompt(self, record) -> list[int]: ...

    def samples_grade(self, record, outputs: Sequence[GenOutput]) -> Grade: ...


class Grader(Protocol):
    reader: VerdictReader

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


class AbsoluteGrader:
    """The Grader of absolute records (one response, a 1-5 score), on a Judge's profile, sampling
    and engine. Made per use: a Judge view with other sampling (with_sampling) grades with it."""

    def __init__(self, judge: JudgeParts):
        self.judge = judge
        self.reader = judge.scores

    def request(self, record: Record, *, cancel: threading.Event | None = None,
                samples: int | None = None) -> GenRequest:
        judge = self.judge
        params = judge.sampling if samples is None else replace(judge.sampling, n=samples)
        return self.reader.request(judge.tokenize_prompt(record), params=params, tag=record, cancel=cancel)

    def requests(self, record: Record, *, both_orders: bool = False,
                 cancel: threading.Event | None = None) -> list[GenRequest]:
        return [self.request(record, cancel=cancel)]

    def to_grade(self, record: Record, out: GenOutput) -> Grade:
        return self.reader.to_grade(record, out)

    def row(self, record: Record, results: Sequence[Sequence[GenOutput]]) -> Grade:
        return self.judge.samples_grade(record, results[0])

    def failed(self, record: Record, error: Exception) -> Grade:
        return error_row(error, record)
