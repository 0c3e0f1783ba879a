"""The one verdict reader: how a grading output becomes a verdict and a row, for any kind of verdict.

Absolute scores ("[RESULT] 4") and pairwise winners ("[RESULT] A", MT-Bench's "[[A]]") are the same
algorithm with another configuration (a `VerdictStyle`): the labels, how a verdict is found in the
text, when the engine probes the next-token distribution (the text so far ends where a label comes
next), and which row the verdict fills. On a model, the style's labels become token ids
(verdict_tokens.VerdictTokens) and the profile's marker the forced continuation: an output that
ends with no verdict is continued with the marker and the label is read from the model's own
probabilities there (`forced`), never by resampling.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..engine import GenOutput, GenRequest, SamplingParams
from .grades import Grade, RelativeGrade, note_run
from .verdict_text import (BRACKET_AT_END, MARKER_AT_END, WINNER_AT_END, feedback_before, find_bracket_winner,
                           find_score, find_winner)
from .rubrics import SCORES
from .verdict_tokens import VerdictTokens

if TYPE_CHECKING:
    from ..engine import LlamaModel


@dataclass(frozen=True)
class VerdictStyle:
    """One kind of verdict, as text: its labels, how the last valid one is found (`find`, whose
    match names the label in group `label_group`), and `at_end`, the text before a label (the
    engine probes there; feedback ends there). `cue` is a cheap word test run before the pattern
    (this runs after every generated token), on the last `tail` characters."""

    labels: tuple[str, ...]
    find: Callable[[str], "re.Match[str] | None"]
    label_group: str
    at_end: re.Pattern[str]
    tail: int
    cue: str | None
    row: type[Grade]

    def wants_probe(self, text: str) -> bool:
        tail = text[-self.tail:]
        return (self.cue is None or self.cue in tail.lower()) and self.at_end.search(tail) is not None

    def feedback(self, text: str) -> str:
        return feedback_before(text, self.find, self.at_end)


# 48 characters hold the longest score marker with decorations ("[RESULT] score of (").
SCORE_STYLE = VerdictStyle(tuple(str(s) for s in SCORES), find_score, "score", MARKER_AT_END, 48, "result", Grade)
# Pairwise, by the profile's relative.verdict_style: Prometheus' "[RESULT] A", MT-Bench's "[[A]]".
PAIR_STYLES = {
    "prometheus": VerdictStyle(("A", "B"), find_winner, "label", WINNER_AT_END, 40, "result", RelativeGrade),
    "mt-bench": VerdictStyle(("A", "B"), find_bracket_winner, "label", BRACKET_AT_END, 8, None, RelativeGrade),
}


@dataclass(frozen=True)
class Verdict:
    """What a grading output concluded: the label (a score "1".."5", or a winner "A"/"B"), P(each
    label) where it was chosen, the next-token mass on the labels, and whether the model had to be
    made to state it (`suffix`: the text that states it, appended to the output)."""

    label: str | None
    probabilities: tuple[float, ...] | None
    mass: float | None
    forced: bool
    suffix: str = ""

    @property
    def score(self) -> int | None:
        return int(self.label) if self.label is not None and self.label.isdigit() else None

    @property
    def score_mass(self) -> float | None:
        return self.mass


NO_VERDICT = Verdict(None, None, None, False)


class VerdictReader:
    """A VerdictStyle on one model's tokenizer, with the profile's marker (`continuation`, the text
    appended to make the model state its verdict): the request that grades a prompt, the verdict
    of its output, and the output's row."""

    def __init__(self, style: VerdictStyle, model: "LlamaModel", continuation: str):
        self.style = style
        self.continuation = continuation
        self.tokens = VerdictTokens.for_model(model, continuation, style.labels)

    def request(self, tokens: list[int], *, params: SamplingParams, tag: object = None,
                cancel: threading.Event | None = None) -> GenRequest:
        """A request for a prompt that asks for this kind of verdict: probes where the label comes
        next, and the forced continuation when the output ends without one."""
        find, continuation = self.style.find, list(self.tokens.continuation)

        def on_finish(text: str) -> list[int] | None:
            return None if find(text) else continuation

        return GenRequest(tokens=tokens, params=params, tag=tag, probe_ids=self.tokens.probe_ids,
                          probe_when=self.style.wants_probe, on_finish=on_finish, cancel=cancel)

    def verdict(self, out: GenOutput) -> Verdict:
        """The verdict of a finished request, and how sure the model was of it."""
        if out.finish_reason == "cancelled":
            return NO_VERDICT
        if out.final_probe is not None:
            label, probabilities, mass, suffix = self.tokens.forced(out, self.continuation)
            return Verdict(label, probabilities, mass, True, suffix)
        match = self.style.find(out.text)
        if match is None:  # cut by the caller (a stop string) before any verdict
            return NO_VERDICT
        group = self.style.label_group
        probabilities, mass = self.tokens.written(out, match.start(), match.start(group))
        return Verdict(match.group(group).upper(), probabilities, mass, False)

    def to_grade(self, record, out: GenOutput) -> Grade:
        """The row of one output of `record`'s prompt."""
        grade = self.style.row.of_record(record, feedback=self.style.feedback(out.text), output=out.text,
                                         finish_reason=out.finish_reason, prompt_tokens=out.prompt_tokens,
                                         completion_tokens=len(out.tokens), seconds=out.seconds)
        if note_run(grade, out):
            grade.take(self.verdict(out))
        return grade


__all__ = ["NO_VERDICT", "PAIR_STYLES", "SCORE_STYLE", "Verdict", "VerdictReader", "VerdictStyle"]
