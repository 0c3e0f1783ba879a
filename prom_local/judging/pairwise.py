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
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from ..engine import GenOutput, GenRequest, LlamaModel, SamplingParams
from .grading import (BRACKET_AT_END, WINNER_AT_END, RelativeGrade, find_bracket_winner, find_winner, note_run,
                      split_relative_feedback)
from .prompts import LABELS, PromptProfile
from .records import RelativeRecord, other_label
from .verdict_tokens import VerdictTokens


class JudgeParts(Protocol):
    """What pairwise grading takes from its Judge. A protocol, not an import of judge.py: the Judge
    makes its PairJudge, so judge.py imports this module and not the other way round."""
    profile: PromptProfile
    model: LlamaModel
    sampling: SamplingParams

    def tokenize_prompt(self, record) -> list[int]: ...


def _wants_probe(text: str) -> bool:
    tail = text[-40:]
    return "result" in tail.lower() and WINNER_AT_END.search(tail) is not None


def _wants_bracket_probe(text: str) -> bool:
    return BRACKET_AT_END.search(text[-8:]) is not None


# The verdict grammar by the profile's relative.verdict_style: (find, probe when, the marker at the end).
_STYLES = {"prometheus": (find_winner, _wants_probe, WINNER_AT_END),
           "mt-bench": (find_bracket_winner, _wants_bracket_probe, BRACKET_AT_END)}


@dataclass(frozen=True)
class PairVerdict:
    winner: str | None
    probabilities: tuple[float, ...] | None
    label_mass: float | None
    forced: bool
    suffix: str = ""


class PairJudge:
    """The relative half of a Judge, its Grader for pairs (grader.py): requests for pairs, and
    their outputs -> RelativeGrade."""

    def __init__(self, judge: JudgeParts):
        judge.profile.require_relative()
        self.judge = judge
        self.continuation = judge.profile.relative_continuation
        self.find, self.wants_probe, self.at_end = _STYLES[judge.profile.verdict_style]
        self.tokens = VerdictTokens.for_model(judge.model, self.continuation, LABELS)

    def request(self, record: RelativeRecord, *, params: SamplingParams | None = None,
                cancel: threading.Event | None = None, samples: int | None = None) -> GenRequest:
        """One order's request; `samples` does not apply (a pair is graded once per order)."""
        tokens = self.tokens

        def on_finish(text: str) -> list[int] | None:
            return None if self.find(text) else list(tokens.continuation)

        return GenRequest(tokens=self.judge.tokenize_prompt(record), params=params or replace(self.judge.sampling, n=1),
                          tag=record, probe_ids=tokens.probe_ids, probe_when=self.wants_probe,
                          on_finish=on_finish, cancel=cancel)

    def requests(self, record: RelativeRecord, *, both_orders: bool,
                 cancel: threading.Event | None = None) -> list[GenRequest]:
        records = [record, record.swapped()] if both_orders else [record]
        return [self.request(r, cancel=cancel) for r in records]

    def verdict(self, out: GenOutput) -> PairVerdict:
        if out.finish_reason == "cancelled":
            return PairVerdict(None, None, None, False)
        if out.final_probe is not None:
            winner, probabilities, mass, suffix = self.tokens.forced(out, self.continuation)
            return PairVerdict(winner, probabilities, mass, True, suffix)
        match = self.find(out.text)
        if match is None:
            return PairVerdict(None, None, None, False)
        probabilities, mass = self.tokens.written(out, match.start(), match.start("label"))
        return PairVerdict(match.group("label").upper(), probabilities, mass, False)

    def to_grade(self, record: RelativeRecord, out: GenOutput) -> RelativeGrade:
        feedback = split_relative_feedback(out.text, self.find, self.at_end)
        grade = RelativeGrade(id=record.id, score=None, feedback=feedback,
                              output=out.text, finish_reason=out.finish_reason,
                              prompt_tokens=out.prompt_tokens, completion_tokens=len(out.tokens),
                              seconds=out.seconds, gold_winner=record.gold_winner)
        if not note_run(grade, out):
            return grade
        verdict = self.verdict(out)
        grade.winner, grade.forced = verdict.winner, verdict.forced
        grade.probabilities, grade.label_mass = verdict.probabilities, verdict.label_mass
        return grade

    def row(self, record: RelativeRecord, results: Sequence[Sequence[GenOutput]]) -> RelativeGrade:
        """The pair's row from its requests' outputs: one order, or both (combine)."""
        outs = [result[0] for result in results]
        return self.combine(record, outs) if len(outs) == 2 else self.to_grade(record, outs[0])

    def failed(self, record: RelativeRecord, error: Exception) -> RelativeGrade:
        return failed_pair(record, error)

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


def failed_pair(record: RelativeRecord, error: Exception) -> RelativeGrade:
    return RelativeGrade(id=record.id, score=None, feedback="", output="", gold_winner=record.gold_winner,
                         error=str(error), finish_reason="error", prompt_tokens=getattr(error, "n_tokens", 0))


__all__ = ["PairJudge", "PairVerdict", "both_orders_grade", "failed_pair"]
