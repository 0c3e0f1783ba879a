"""From the model's own output text to a score: parsing, score probabilities, the result type."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .rubrics import SCORES

# The card's pattern is r'\[RESULT\]\s+([0-5])'. We accept what a judge evidently means after the
# marker, in any case: "[RESULT] 4", "[Result]: 4", "[RESULT: 4]", "[RESULT] Score: 4", "[RESULT] (4)",
# "[RESULT] 4/5", "[RESULT] 4 out of 5", "[RESULT] score of 4". Never a false positive: only 1..5,
# not "10", "4.5", "3-4", "4/10" or "4 out of 10", and not a marker in quotes (a verdict quoted from
# the graded response, which is untrusted text). Without a marker nothing counts, unlike
# prometheus-eval's parser: the rubric the model reads is full of "Score 4:" lines.
_MARKER = r"\[\s*RESULT\s*(?:\]|:)"
_DECORATION = r"[\s:*]*(?:(?:score\s+of|score|result)\s*:?\s*)?[(\[]?\s*"
SCORE_PATTERN = re.compile(
    _MARKER + _DECORATION
    + r"(?P<score>[1-5])(?!\d)(?![.,]\d)(?![ \t]*[-~–][ \t]*\d)"
    + r"(?:\s*/\s*(?P<over>\d+)|\s+out\s+of\s+(?P<outof>\d+))?",
    re.IGNORECASE)
FEEDBACK_PREFIX = re.compile(r"^\s*Feedback\s*:\s*", re.IGNORECASE)
# The output so far ends where the score digit comes next: the engine probes P(1..5) there.
MARKER_AT_END = re.compile(_MARKER + _DECORATION + r"$", re.IGNORECASE)
_OPENING_QUOTES = "\"'`\u201c\u2018\u300c\u300e"
_CLOSING_QUOTES = "\"'`\u201d\u2019\u300d\u300f"


def _is_verdict(text: str, match: re.Match[str]) -> bool:
    scale = match.group("over") or match.group("outof")
    if scale is not None and int(scale) != 5:
        return False
    # A quote mark right against the marker or the score: `"[RESULT] 5"` is cited, not concluded.
    before = text[match.start() - 1: match.start()]
    after = text[match.end():].lstrip(")]*")[:1]
    return not ((before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES))


def find_score(text: str) -> re.Match[str] | None:
    """The last valid verdict in text: when a model restates its verdict, the final one counts."""
    last = None
    for match in SCORE_PATTERN.finditer(text):
        if _is_verdict(text, match):
            last = match
    return last


def extract_score(text: str) -> int | None:
    """The score in a judge's output, or None when it holds no valid `[RESULT] 1..5`."""
    match = find_score(text)
    return int(match.group("score")) if match else None


def split_feedback(text: str) -> str:
    """The feedback part of an output: before the winning marker, without a leading `Feedback:`."""
    match = find_score(text) or MARKER_AT_END.search(text)
    body = text[: match.start()] if match else text
    return FEEDBACK_PREFIX.sub("", body).strip()


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


# -- relative (pairwise) verdicts: "[RESULT] A" / "[RESULT] B" -------------------------------------
# prometheus-eval's relative parser accepts, case-insensitively, "[RESULT] A", "[RESULT: A]",
# "[Result] Response A", "[Response A]" and a line "Result: A", each only when nothing but a
# closing bracket follows on its line. We accept the same forms, plus decorations a judge evidently
# means ("[RESULT] (A)", "**A**", "A."), with two deliberate differences (tests/test_relative.py):
# the LAST verdict counts (a model that restates its verdict means the final one; prometheus-eval
# takes the first), and a verdict in quotes is cited from the untrusted responses, not concluded.
_REL_MARKER = r"(?:\[\s*RESULT\s*(?:\]|:)[\s:*]*(?:Response\s+)?|\[\s*Response\s+|(?:^|(?<=\n))Result:?[ \t]*)"
WINNER_PATTERN = re.compile(
    _REL_MARKER + r"[(\[*]*\s*(?P<label>[AB])(?![A-Za-z0-9])[\])*.]*[ \t]*(?=\n|$)",
    re.IGNORECASE)
# The output so far ends where the verdict label comes next: the engine probes P(A), P(B) there.
WINNER_AT_END = re.compile(r"\[\s*RESULT\s*(?:\]|:)[\s:*]*(?:Response\s*)?[(\[*]*\s*$", re.IGNORECASE)


def find_winner(text: str) -> re.Match[str] | None:
    """The last valid relative verdict in text (group "label": A or B, any case)."""
    last = None
    for match in WINNER_PATTERN.finditer(text):
        before = text[match.start() - 1: match.start()]
        after = text[match.end():].lstrip()[:1]
        if (before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES):
            continue
        last = match
    return last


def extract_winner(text: str) -> str | None:
    """"A" or "B" from a relative judge's output, or None when it states no verdict."""
    match = find_winner(text)
    return match.group("label").upper() if match else None


# MT-Bench's verdict, "[[A]]" / "[[B]]", for profiles whose pairwise prompt asks for it (KUDGE's,
# relative.verdict_style "mt-bench"). KUDGE's extract_pairwise takes the last [[...]]; so do we,
# for A or B only, and not when quoted (cited from a response).
BRACKET_WINNER = re.compile(r"\[\[\s*(?P<label>[AB])\s*\]\]", re.IGNORECASE)
BRACKET_AT_END = re.compile(r"\[\[\s*$")


def find_bracket_winner(text: str) -> re.Match[str] | None:
    last = None
    for match in BRACKET_WINNER.finditer(text):
        before = text[match.start() - 1: match.start()]
        after = text[match.end(): match.end() + 1]
        if not ((before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES)):
            last = match
    return last


def split_relative_feedback(text: str, find=find_winner, at_end: re.Pattern[str] = WINNER_AT_END) -> str:
    match = find(text) or at_end.search(text)
    body = text[: match.start()] if match else text
    return FEEDBACK_PREFIX.sub("", body).strip()


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
