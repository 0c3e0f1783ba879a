"""Relative (pairwise) grading: which of two responses is better, and how sure the model was.

The same machinery as absolute scores, with two labels instead of five scores: the engine probes
the model's next-token distribution where it writes the verdict ("[RESULT] " -> "A" | "B"), and
when an output ends with no verdict the same sequence is continued with the profile's marker and
the choice is read from the model's own P(A), P(B) there (`forced`), never by resampling.

`--both-orders` grades each pair twice, A/B and B/A (two sequences that share the prompt up to the
first response in the KV cache), maps the second verdict back to the record's own labels, and
reports position consistency. A pair whose two orders disagree is a tie (winner null, `tie`: the
MT-Bench paper's convention for position-inconsistent verdicts).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Sequence

from ..engine import GenOutput, GenRequest, SamplingParams
from .kinds import JudgeParts
from .grades import RelativeGrade, error_row
from .prompts import LABELS
from .records import RelativeRecord, other_label
from .verdicts import PAIR_STYLES, VerdictReader


class PairGrader:
    """The relative half of a Judge, its Grader for pairs (kinds.py): requests for pairs, and
    their outputs -> RelativeGrade, read by the one VerdictReader in the profile's pairwise style."""

    def __init__(self, judge: JudgeParts):
        judge.profile.require_relative()
        self.judge = judge
        self.reader = VerdictReader(PAIR_STYLES[judge.profile.verdict_style], judge.model,
                                    judge.profile.relative_continuation)

    def request(self, record: RelativeRecord, *, params: SamplingParams | None = None,
                cancel: threading.Event | None = None, samples: int | None = None) -> GenRequest:
        """One order's request; `samples` does not apply (a pair is graded once per order)."""
        return self.reader.request(self.judge.tokenize_prompt(record), tag=record, cancel=cancel,
                                   params=params or replace(self.judge.sampling, n=1))

    def requests(self, record: RelativeRecord, *, both_orders: bool,
                 cancel: threading.Event | None = None) -> list[GenRequest]:
        records = [record, record.swapped()] if both_orders else [record]
        return [self.request(r, cancel=cancel) for r in records]

    def to_grade(self, record: RelativeRecord, out: GenOutput) -> RelativeGrade:
        return self.reader.to_grade(record, out)  # type: ignore[return-value]

    def row(self, record: RelativeRecord, results: Sequence[Sequence[GenOutput]]) -> RelativeGrade:
        """The pair's row from its requests' outputs: one order, or both (combine)."""
        outs = [result[0] for result in results]
        return self.combine(record, outs) if len(outs) == 2 else self.to_grade(record, outs[0])

    def failed(self, record: RelativeRecord, error: Exception) -> RelativeGrade:
        return error_row(error, record)  # type: ignore[return-value]

    def combine(self, record: RelativeRecord, outputs: Sequence[GenOutput]) -> RelativeGrade:
        """One row from the A/B and B/A outputs of a pair (see the module doc)."""
        ab = self.to_grade(record, outputs[0])
        ba = self.to_grade(record.swapped(), outputs[1])
        return both_orders_grade(record, ab, ba)


def both_orders_grade(record: RelativeRecord, ab: RelativeGrade, ba: RelativeGrade) -> RelativeGrade:
    """The A/B grade carrying both orders; B/A's verdict mapped back to the record's labels."""
    back = tuple(reversed(ba.probabilities)) if ba.probabilities is not None else None
    orders = [{"order": "AB", "winner": ab.winner, "probabilities": _probs(ab.probabilities),
               "forced": ab.forced, "output": ab.output},
              {"order": "BA", "winner": other_label(ba.winner), "probabilities": _probs(back),
               "forced": ba.forced, "output": ba.output}]
    winners = (ab.winner, other_label(ba.winner))
    grade = ab
    grade.orders = orders
    grade.consistent = None not in winners and winners[0] == winners[1]
    grade.tie = None not in winners and not grade.consistent
    grade.winner = winners[0] if grade.consistent else None
    # The pair's belief over both positions: the mean of the two orders' P(A), P(B), so that a
    # position bias in one order is averaged out rather than reported as the model's confidence.
    if ab.probabilities is not None and back is not None:
        grade.probabilities = tuple((x + y) / 2 for x, y in zip(ab.probabilities, back))
    if ab.label_mass is not None and ba.label_mass is not None:
        grade.label_mass = (ab.label_mass + ba.label_mass) / 2
    grade.forced = ab.forced or ba.forced
    grade.error = ab.error or ba.error
    if "cancelled" in (ab.finish_reason, ba.finish_reason):
        grade.finish_reason = "cancelled"   # not written: the next run grades the pair again
    elif ab.finish_reason != ba.finish_reason:
        grade.finish_reason = f"{ab.finish_reason}/{ba.finish_reason}"
    grade.prompt_tokens += ba.prompt_tokens
    grade.completion_tokens += ba.completion_tokens
    grade.seconds = max(ab.seconds, ba.seconds)
    grade.extra["reused_prompt_tokens"] = (ab.extra.get("reused_prompt_tokens", 0)
                                           + ba.extra.get("reused_prompt_tokens", 0))
    for key in ("drafted_tokens", "accepted_tokens"):   # with --draft: both orders' drafts
        if key in ab.extra or key in ba.extra:
            grade.extra[key] = ab.extra.get(key, 0) + ba.extra.get(key, 0)
    return grade


def _probs(probabilities: tuple[float, ...] | None) -> dict | None:
    return None if probabilities is None else {l: round(p, 6) for l, p in zip(LABELS, probabilities)}


__all__ = ["PairGrader", "both_orders_grade"]
