"""A graded record as a row: Grade (a score) and RelativeGrade (a pair's winner), the one
constructor of rows without a verdict (error_row), and what a row is read back from (from_row,
kind_of). verdicts.py fills a row from a verdict; runs/ writes rows as results lines."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .rubrics import SCORES


def normalise(probabilities: Sequence[float]) -> tuple[float, ...]:
    total = sum(probabilities)
    if total <= 0 or not math.isfinite(total):
        return tuple(0.0 for _ in probabilities)
    return tuple(p / total for p in probabilities)


def round_half_up(x: float) -> int:
    """A mean score as one score. Python's round() rounds halves to even (round(2.5) == 2); a mean
    of 2.5 is reported as 3, for sample means and benchmark gold means alike."""
    return math.floor(x + 0.5)


def expected_score(probabilities: Sequence[float]) -> float | None:
    if not probabilities or sum(probabilities) <= 0:
        return None
    return float(sum(s * p for s, p in zip(SCORES, probabilities)))


ABSOLUTE, RELATIVE = "absolute", "relative"


def kind_of(row: dict) -> str:
    """A results row's kind, ABSOLUTE or RELATIVE: the one test of a row (reports/rows.py hands it on).
    Rows are the results file's JSON objects: a pairwise row carries "mode": "relative" (the
    results contract), an absolute row no "mode"."""
    return RELATIVE if row.get("mode") == "relative" else ABSOLUTE


@dataclass
class Grade:
    """One graded record: what the model wrote, the score, and how sure it was."""

    id: str
    score: int | None
    feedback: str
    output: str
    # P(score = 1..5) at the position where the score token was chosen, renormalised over 1..5.
    probabilities: tuple[float, ...] | None = None
    # How much of the next-token mass fell on 1..5 at all (low = the model wanted to write something else).
    score_mass: float | None = None
    forced: bool = False
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    gold_score: int | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def of_record(cls, record, **fields) -> "Grade":
        """A row of `record` with no verdict yet: its id and gold, the fields the record's reader
        wants in its row (row_fields), and `fields` (what the run measured, or its error)."""
        grade = cls(**{"id": record.id, "score": None, "feedback": "", "output": "",
                       "gold_score": record.gold_score, **fields})
        attach_gold(grade, record.gold_scores)
        grade.extra.update(record.row_fields or {})
        return grade

    def take(self, verdict) -> None:
        """Fill the row with a verdict (verdicts.Verdict): the score and how sure the model was."""
        self.score, self.forced = verdict.score, verdict.forced
        self.probabilities, self.score_mass = verdict.probabilities, verdict.mass

    @property
    def expected(self) -> float | None:
        return expected_score(self.probabilities) if self.probabilities else None

    @property
    def first_token_seconds(self) -> float | None:
        value = self.extra.get("first_token_seconds")
        return float(value) if value is not None else None

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token: the rate a reader sees the feedback stream at."""
        first = self.first_token_seconds
        if first is None or self.completion_tokens < 2 or self.seconds <= first:
            return None
        return (self.completion_tokens - 1) / (self.seconds - first)

    def to_row(self) -> dict:
        row = asdict(self)
        extra = row.pop("extra")
        row["expected_score"] = None if self.expected is None else round(self.expected, 4)
        if self.probabilities is not None:
            row["probabilities"] = {str(s): round(p, 6) for s, p in zip(SCORES, self.probabilities)}
        if self.score_mass is not None:
            row["score_mass"] = round(self.score_mass, 6)
        row["seconds"] = round(self.seconds, 3)
        row.update(extra)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Grade":
        """The Grade a results row was written from (to_row's inverse, up to its rounding)."""
        if kind_of(row) == RELATIVE and cls is Grade:
            return RelativeGrade.from_row(row)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        data = {k: v for k, v in row.items() if k in known}
        data["probabilities"] = row_probabilities(row)
        data["extra"] = {k: v for k, v in row.items() if k not in known and k != "expected_score"}
        return cls(**data)


def row_type(record) -> type[Grade]:
    """The row class of a record's kind: a pair's row is a RelativeGrade."""
    return RelativeGrade if record.is_relative else Grade


def error_row(error: Exception | str, record=None, *, row_id: str | None = None,
              finish_reason: str = "error") -> Grade:
    """The one constructor of a row with no verdict: a record the engine could not run (a prompt
    too long for the context: its tokens are counted), one a server refused or a run cancelled
    (`finish_reason` "cancelled"), a line that is not a record (an InputError, whose record_id
    names the row), a batch line the server failed (`row_id`, its custom_id). With `record`, the
    row is of its kind and carries its id and gold, as its graded row would."""
    fields = {"error": str(error), "finish_reason": finish_reason, "prompt_tokens": getattr(error, "n_tokens", 0)}
    if record is not None:
        return row_type(record).of_record(record, **fields)
    return Grade(id=row_id or getattr(error, "record_id", None) or "?", score=None, feedback="", output="",
                 **fields)


def note_run(grade: Grade, out) -> bool:
    """Put what the engine measured of a finished output (`out`, an engine GenOutput) into its row;
    False when the output was cancelled, which makes the row an error row with no verdict."""
    grade.extra["reused_prompt_tokens"] = out.reused_prompt_tokens
    if out.drafted_tokens:   # only with drafts on (--draft): rows without them stay as they were
        grade.extra["drafted_tokens"] = out.drafted_tokens
        grade.extra["accepted_tokens"] = out.accepted_tokens
    if out.first_token_seconds is not None:
        grade.extra["first_token_seconds"] = round(out.first_token_seconds, 4)
    if out.finish_reason == "cancelled":
        grade.error = "cancelled"
        return False
    return True


def attach_gold(grade: Grade, gold_scores: Sequence[int] | None) -> Grade:
    """Give a row every annotator's gold score and their mean (benchmark files carry several per
    record); `report` correlates against gold_mean, as the Prometheus papers do. Rows of inputs with
    one gold score are left as they were."""
    grade.extra.update(gold_fields(gold_scores))
    return grade


def gold_fields(gold_scores: Sequence[int] | None) -> dict:
    """The row fields for a record's list of gold scores ({} without one)."""
    if not gold_scores:
        return {}
    return {"gold_scores": list(gold_scores), "gold_mean": round(sum(gold_scores) / len(gold_scores), 4)}


def row_probabilities(row: dict) -> tuple[float, ...] | None:
    """P(score = 1..5) from a results row, as to_row writes them ({"1": p, ..., "5": p}); None when
    the row has none, or ones prom-local did not write (a file edited by hand, another tool's)."""
    probs = row.get("probabilities")
    if not isinstance(probs, dict):
        return None
    try:
        return tuple(float(probs[str(s)]) for s in SCORES)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class RelativeGrade(Grade):
    """One graded pair. `probabilities` is (P(A), P(B)) at the verdict position, renormalised over
    the two labels; `label_mass` is how much of the next-token mass fell on them at all."""

    winner: str | None = None
    label_mass: float | None = None
    gold_winner: str | None = None
    # --both-orders: one entry per order ("AB", "BA"), winners mapped back to the record's labels.
    orders: list | None = None
    consistent: bool | None = None
    tie: bool = False

    @classmethod
    def of_record(cls, record, **fields) -> "RelativeGrade":
        return cls(**{"id": record.id, "score": None, "feedback": "", "output": "",
                      "gold_winner": record.gold_winner, **fields})

    def take(self, verdict) -> None:
        self.winner, self.forced = verdict.label, verdict.forced
        self.probabilities, self.label_mass = verdict.probabilities, verdict.mass

    @property
    def expected(self) -> float | None:
        return None

    def to_row(self) -> dict:
        row = {"id": self.id, "mode": "relative", "winner": self.winner, "feedback": self.feedback,
               "output": self.output,
               "probabilities": None if self.probabilities is None else
               {label: round(p, 6) for label, p in zip(("A", "B"), self.probabilities)},
               "label_mass": None if self.label_mass is None else round(self.label_mass, 6),
               "forced": self.forced, "finish_reason": self.finish_reason,
               "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "seconds": round(self.seconds, 3), "gold_winner": self.gold_winner, "error": self.error}
        if self.orders is not None:
            row.update(orders=self.orders, consistent=self.consistent, tie=self.tie)
        row.update(self.extra)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "RelativeGrade":
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "probabilities", "mode")}
        data = {k: v for k, v in row.items() if k in known}
        probs = row.get("probabilities")
        try:
            data["probabilities"] = (float(probs["A"]), float(probs["B"])) if isinstance(probs, dict) else None
        except (KeyError, TypeError, ValueError):
            data["probabilities"] = None
        data.setdefault("score", None)
        data["extra"] = {k: v for k, v in row.items() if k not in known and k not in ("mode", "probabilities")}
        return cls(**data)
