"""Input records: one mapping (a parsed JSONL line, a form, an HTTP body) -> a `Record` or a
`RelativeRecord`, with errors that name the file, line and field.

Reading files is inputs/'s job (`prom_local.inputs.read_records`); this module holds what a record
is and how one mapping becomes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping, Protocol, Union

from ..errors import InputError
from .rubrics import SCORES, Rubric


class _Profile(Protocol):
    """What a record asks of a prompts.PromptProfile (prompts imports this module, not back)."""

    def require_relative(self) -> None: ...


# Feedback-Collection columns first, then the plain names; the first one present wins.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("orig_instruction", "instruction"),
    "response": ("orig_response", "response"),
    "reference_answer": ("orig_reference_answer", "reference_answer"),
    "score": ("orig_score", "score", "gold_score"),
    # Relative (pairwise) records: prometheus-eval's names, the Preference-Collection columns.
    "response_A": ("orig_response_A", "response_A"),
    "response_B": ("orig_response_B", "response_B"),
    "gold_winner": ("gold_winner", "orig_preference", "preference"),
}


@dataclass(frozen=True)
class Record:
    id: str
    instruction: str
    response: str
    rubric: Rubric
    reference_answer: str | None = None
    gold_score: int | None = None
    line: int | None = None
    # Every annotator's score, when the input has several (benchmark files: gpt4_score [5, 4, 5]);
    # gold_score is then their mean rounded half up.
    gold_scores: tuple[int, ...] | None = None
    # Fields the reader wants in the record's results row as they are (KUDGE: the exact human
    # score, which gold_score can only round); the judge copies them into the row.
    row_fields: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    # The JSON object the record was read from, as given: what `--server` sends, so every field
    # (those the server knows and this client may not) reaches the server unchanged.
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    is_relative: ClassVar[bool] = False

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_answer)

    def orders(self) -> tuple["Record"]:
        """The record as each prompt that may grade it shows it: one order."""
        return (self,)

    def require_prompt(self, profile: _Profile) -> None:
        """Every profile has an absolute prompt: nothing to check."""


@dataclass(frozen=True)
class RelativeRecord:
    """A pairwise record: which of two responses to one instruction is better."""

    id: str
    instruction: str
    response_A: str
    response_B: str
    # What the relative template's {rubric} takes: prometheus-eval passes the criteria as one
    # plain string, so a `rubric` string is kept verbatim and a rubric object gives its criteria.
    rubric: str
    reference_answer: str | None = None
    gold_winner: str | None = None    # "A" | "B"
    line: int | None = None
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # as Record.raw

    is_relative: ClassVar[bool] = True

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_answer)

    def orders(self) -> tuple["RelativeRecord", "RelativeRecord"]:
        """A/B and B/A: --both-orders grades the second too (sizing the work counts the longer)."""
        return (self, self.swapped())

    def require_prompt(self, profile: _Profile) -> None:
        """A UsageError when `profile` has no relative prompt for this pair."""
        profile.require_relative()

    def swapped(self) -> "RelativeRecord":
        """The same pair in the other order (B shown as A): the second half of --both-orders."""
        return replace(self, response_A=self.response_B, response_B=self.response_A,
                       gold_winner=other_label(self.gold_winner))


AnyRecord = Union[Record, RelativeRecord]
RECORD_TYPES = (Record, RelativeRecord)


def other_label(label: str | None) -> str | None:
    return {"A": "B", "B": "A"}.get(label) if label is not None else None  # type: ignore[arg-type]


def _pick(data: Mapping[str, Any], logical: str) -> tuple[str, Any]:
    """(field name, value) for a logical field; when absent, the name in the style the record uses,
    so the error message points at the key the user meant to write."""
    for name in FIELD_ALIASES[logical]:
        if name in data:
            return name, data[name]
    return _styled(data, logical), None


def _styled(data: Mapping[str, Any], name: str) -> str:
    return f"orig_{name}" if any(str(k).startswith("orig_") for k in data) else name


def record_from_mapping(data: Any, *, line: int, source: str = "<input>",
                        default_id: str | None = None) -> AnyRecord:
    """A Record, or a RelativeRecord when the mapping holds response_A/response_B."""
    def fail(message: str, field: str | None = None) -> InputError:
        return InputError(message, source=source, line=line, field=field)

    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, got {type(data).__name__}")

    def text(logical: str, *, required: bool) -> str | None:
        name, value = _pick(data, logical)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                shown = " or ".join(FIELD_ALIASES[logical])
                raise fail("is empty" if name in data else f"missing (expected {shown})", name)
            return None
        if not isinstance(value, str):
            raise fail(f"must be a string, got {type(value).__name__}", name)
        return value

    instruction = text("instruction", required=True)
    rid = _record_id(data, line, default_id, fail)
    pair = [name for logical in ("response_A", "response_B") for name in FIELD_ALIASES[logical] if name in data]
    if pair:
        if _pick(data, "response")[1] is not None:
            raise fail(f"has both {_pick(data, 'response')[0]} (absolute) and {pair[0]} (relative); "
                       "keep one kind per record", pair[0])
        return RelativeRecord(
            id=rid, instruction=instruction,  # type: ignore[arg-type]
            response_A=text("response_A", required=True), response_B=text("response_B", required=True),  # type: ignore[arg-type]
            rubric=_relative_rubric(data, fail), reference_answer=text("reference_answer", required=False),
            gold_winner=_gold_winner(data, fail), line=line, raw=data)
    response = text("response", required=True)
    reference = text("reference_answer", required=False)

    rubric = _rubric(data, fail)

    score_name, gold = _pick(data, "score")
    if gold is not None:
        # Benchmark files carry gold scores as a list of annotator scores (e.g. gpt4_score: [5, 5, 5]);
        # we accept a single integer here and leave lists to the user to reduce.
        if isinstance(gold, bool) or not isinstance(gold, (int, float, str)):
            raise fail(f"must be an integer 1-5, got {json.dumps(gold)[:40]}", score_name)
        try:
            as_float = float(gold)
            valid = as_float == int(as_float) and int(as_float) in SCORES
        except (ValueError, OverflowError):  # "abc", NaN, inf
            valid = False
        if not valid:
            raise fail(f"must be an integer 1-5, got {gold!r}", score_name)
        gold = int(as_float)

    return Record(id=rid, instruction=instruction, response=response, rubric=rubric,  # type: ignore[arg-type]
                  reference_answer=reference, gold_score=gold, line=line, raw=data)


def _record_id(data: Mapping[str, Any], line: int, default_id: str | None, fail) -> str:
    rid = data.get("id", default_id if default_id is not None else str(line))
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise fail("must be a string or an integer", "id")
    return str(rid)


def _gold_winner(data: Mapping[str, Any], fail) -> str | None:
    name, value = _pick(data, "gold_winner")
    if value is None:
        return None
    label = value.strip().upper() if isinstance(value, str) else None
    if label not in ("A", "B"):
        raise fail(f'must be "A" or "B", got {json.dumps(value)[:40]}', name)
    return label


def _relative_rubric(data: Mapping[str, Any], fail) -> str:
    """The criteria text of a relative record: a `rubric` string verbatim, else the criteria of a
    rubric object or of flat (orig_)criteria columns (score descriptions are not used)."""
    value = data.get("rubric")
    if isinstance(value, dict):
        source, prefix = value, "rubric."
    elif value is None:
        source, prefix = data, ""
    elif isinstance(value, str):
        if not value.strip():
            raise fail("is empty", "rubric")
        return value
    else:
        raise fail("must be the criteria text, or an object with criteria", "rubric")
    for name in ("criteria", "orig_criteria"):
        text = source.get(name)
        if isinstance(text, str) and text.strip():
            return text
        if text is not None:
            raise fail("must be a non-empty string", prefix + name)
    raise fail("missing (expected rubric, or criteria / orig_criteria)", "rubric" if prefix or "rubric" in data
               else _styled(data, "criteria"))


def _rubric(data: Mapping[str, Any], fail) -> Rubric:
    """The rubric from a `rubric` object or string, or from flat (orig_)criteria/score columns."""
    value = data.get("rubric")
    if isinstance(value, str):
        try:
            return Rubric.parse(value)
        except (ValueError, KeyError, TypeError) as exc:
            raise fail(f"cannot read rubric text: {exc}", "rubric") from None
    if value is not None and not isinstance(value, dict):
        raise fail("must be an object with criteria and score1..5 descriptions", "rubric")
    if value is None and "criteria" not in data and "orig_criteria" not in data:
        raise fail("missing (expected orig_criteria + orig_score1..5_description, or rubric)", "rubric")
    source, prefix = (value, "rubric.") if value is not None else (data, "")
    try:
        return Rubric.from_mapping(source)
    except KeyError as exc:
        name = exc.args[0]
        raise fail("missing or empty", prefix + (name if prefix or name.startswith("orig_")
                                                 else _styled(data, name))) from None
    except TypeError as exc:
        raise fail("must be a string", prefix + exc.args[0]) from None
