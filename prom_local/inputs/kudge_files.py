"""KUDGE's CSV files (github.com/guijinSON/kudge, data/*.csv) as input, read with the stdlib `csv`.

KUDGE ships every case as one pre-rendered judge prompt, `judge_query`, beside the human gold:

- pointwise (`k2-eval-pointwise.csv`): `judge_query` + `final_score` (src/pointwise_eval.py reads
  it; a float, e.g. 4.5);
- false information (`k2-eval-pointwise-falseinfo.csv`): a response with one fact corrupted
  (`corrupted_sequence`, `explanation`, `type`) and `original_human_score`, the score the
  uncorrupted response had. Graded as it is: reports/kudge.py shows how often the judge falls below;
- pairwise (`k2-eval-pairwise*.csv`): an MT-Bench-style prompt asking for "[[A]]"/"[[B]]" and
  `winner`; read as relative records (see `parse_pairwise`).

The pointwise prompt is Prometheus 1's absolute prompt with a fifth step, "5. Reply in Korean.",
and no space after the final "###Feedback:". We parse it back into fields and check that they
re-render to the original byte for byte, as benchmark_files.py does for prometheus-eval's files.
Rows carry the exact human score (`gold_mean`, and `kudge.human_score`) so `report` computes
KUDGE's own figures on the same numbers; `gold_score` is it rounded half up.

A record's id is its 0-based row position: KUDGE joins a model's decisions to the data by
position (pd.concat(axis=1)), so the same number names the same case in both tools.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .benchmark_files import ParseError, header, rubric_text, split_sections
from ..errors import InputError
from ..judging.grades import round_half_up
from ..judging.records import Record, RelativeRecord
from ..judging.rubrics import SCORES, Rubric

REPLY_IN_KOREAN = "5. Reply in Korean.\n"
_INSTRUCTION = "###The instruction to evaluate:\n"
_RESPONSE = "\n\n###Response to evaluate:\n"
_REFERENCE = "\n\n###Reference Answer (Score 5):\n"
_RUBRIC = "\n\n###Score Rubrics:\n"
_END = "\n\n###Feedback:"

# The pairwise prompt (MT-Bench's judge prompt, one turn, no reference), as in k2-eval-pairwise*.csv.
PAIRWISE_INTRO = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Begin your evaluation by comparing the two responses and provide a short explanation. "
    "Avoid any position biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do "
    "not favor certain names of the assistants. Be as objective as possible. After providing your "
    "explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A "
    "is better, \"[[B]]\" if assistant B is better.")
# What a relative record's {rubric} gets: the criteria KUDGE's pairwise prompt names.
PAIRWISE_CRITERIA = ("Which response follows the user's instructions and answers the user's question better, "
                     "considering helpfulness, relevance, accuracy, depth, creativity, and level of detail?")
_P_INSTRUCTION, _P_A, _P_B, _P_END = "\n\n### Instruction: \n", "\n\n### Response A: \n", \
    "\n\n### Response B: \n", "\n\n### Feedback:"

# Which column holds the human gold, by subset; the first present wins.
GOLD_COLUMNS = ("final_score", "original_human_score")
FALSEINFO_COLUMNS = ("corrupted_sequence", "original_human_score")


@dataclass(frozen=True)
class Query:
    instruction: str
    response: str
    reference_answer: str | None
    rubric: Rubric


def kudge_header(with_reference: bool) -> str:
    """Prometheus 1's task description (benchmark_files.header) with KUDGE's fifth step."""
    return header(with_reference, "prometheus-1").removesuffix("\n") + REPLY_IN_KOREAN + "\n"


def render_query(query: Query) -> str:
    """The judge_query the fields came from: the inverse of `parse_query`."""
    text = kudge_header(query.reference_answer is not None) + _INSTRUCTION
    text += query.instruction + _RESPONSE + query.response
    if query.reference_answer is not None:
        text += _REFERENCE + query.reference_answer
    return text + _RUBRIC + rubric_text(query.rubric) + _END


def parse_query(text: str) -> Query:
    """Split a KUDGE pointwise judge_query into its fields; ParseError when it is not one, or when
    the fields would not render back to exactly the same text."""
    for with_ref in (True, False):
        head = kudge_header(with_ref) + _INSTRUCTION
        if text.startswith(head):
            break
    else:
        raise ParseError("not a KUDGE pointwise prompt (its '###Task Description:' header, with "
                         "'5. Reply in Korean.', is not the one KUDGE renders)")
    if not text.endswith(_END):
        raise ParseError("does not end with '###Feedback:'")
    query = Query(*split_sections(text[len(head): -len(_END)], with_ref))
    if render_query(query) != text:
        raise ParseError("cannot be split into fields unambiguously (re-rendering them does not give "
                         "the same text)")
    return query


def render_pairwise(instruction: str, response_a: str, response_b: str) -> str:
    return PAIRWISE_INTRO + _P_INSTRUCTION + instruction + _P_A + response_a + _P_B + response_b + _P_END


def parse_pairwise(text: str) -> tuple[str, str, str]:
    """(instruction, response A, response B) from a KUDGE pairwise judge_query, checked to re-render."""
    if not text.startswith(PAIRWISE_INTRO + _P_INSTRUCTION) or not text.endswith(_P_END):
        raise ParseError("not a KUDGE pairwise prompt (MT-Bench's judge prompt with [[A]]/[[B]])")
    body = text[len(PAIRWISE_INTRO + _P_INSTRUCTION): -len(_P_END)]
    instruction, sep, rest = body.partition(_P_A)
    a, sep2, b = rest.rpartition(_P_B)
    if not sep or not sep2:
        raise ParseError("has no '### Response A:' / '### Response B:' sections")
    if render_pairwise(instruction, a, b) != text:
        raise ParseError("cannot be split into fields unambiguously")
    return instruction, a, b


def human_score(value: str) -> float:
    """A KUDGE human score ("4.5", "5.0", "3"): a finite number from 1 to 5."""
    try:
        score = float(value)
    except ValueError:
        raise ParseError(f"must be a number from 1 to 5, got {value[:40]!r}") from None
    if not math.isfinite(score) or not SCORES[0] <= score <= SCORES[-1]:
        raise ParseError(f"must be a number from 1 to 5, got {value[:40]!r}")
    return score


def detect(path: str | Path) -> bool:
    """Whether `path` is a KUDGE CSV: a .csv whose header row names a `judge_query` column."""
    if str(path) == "-" or not str(path).lower().endswith(".csv"):
        return False
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as handle:
            return "judge_query" in next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False   # read_kudge reports the problem in its own words


def _rows(path: Path) -> Iterator[tuple[int, int, dict[str, str] | InputError]]:
    """(0-based row index, first line of the row, the row or why it cannot be read)."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot read it: {exc.strerror or exc}", source=str(path)) from None
    with handle:
        reader = csv.DictReader(handle)
        index, line = 0, 2
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield index, line, InputError(f"not a readable CSV row ({exc})", source=str(path), line=line)
                return   # the reader's position is unknown after a broken row: stop here
            if None in row:   # more cells than the header names
                error = InputError(f"{len(row[None]) + len(reader.fieldnames or [])} cells, the header "
                                   f"names {len(reader.fieldnames or [])}", source=str(path), line=line)
                yield index, line, error
            else:
                yield index, line, row
            index, line = index + 1, reader.line_num + 1


def count_records(path: str | Path) -> int | None:
    try:
        return sum(1 for _ in _rows(Path(path)))
    except InputError:
        return None


def read_kudge(path: str | Path) -> Iterator[Record | RelativeRecord | InputError]:
    """A Record (pointwise), RelativeRecord (pairwise) or InputError naming file, line and column,
    for every row of a KUDGE CSV."""
    p = Path(path)
    for index, line, row in _rows(p):
        if isinstance(row, InputError):
            row.record_id = str(index)
            yield row
            continue
        try:
            yield _record(row, index, line, str(p))
        except ParseError as exc:
            # _record raises ParseError(message, column) naming the column at fault.
            error = InputError(exc.args[0], source=str(p), line=line,
                               field=exc.args[1] if len(exc.args) > 1 else None)
            error.record_id = str(index)
            yield error


def _record(row: dict[str, str], index: int, line: int, source: str) -> Record | RelativeRecord:
    text = row.get("judge_query") or ""
    if "winner" in row:
        return _pairwise(row, text, index, line)
    try:
        query = parse_query(text)
    except ParseError as exc:
        raise ParseError(str(exc), "judge_query") from None
    column = next((c for c in GOLD_COLUMNS if (row.get(c) or "").strip()), None)
    gold = None
    if column is not None:
        try:
            gold = human_score(row[column].strip())
        except ParseError as exc:
            raise ParseError(str(exc), column) from None
    falseinfo = all(c in row for c in FALSEINFO_COLUMNS)
    # The falseinfo file also has instruction/response columns, equal to what its prompts hold
    # (54 of 54): one that differs is a file edited by hand. (The full file's other columns are
    # not known here, so nothing is assumed of them.)
    for name in ("instruction", "response") if falseinfo else ():
        if name in row and row[name] != getattr(query, name):
            raise ParseError(f"differs from the {name} inside judge_query", name)
    kudge = {"subset": "falseinfo" if falseinfo else "pointwise", "human_score": gold,
             "gold_column": column}
    if falseinfo:
        # A few rows' type has a stray backspace ("\bword"): the label is what follows it.
        kudge["type"] = (row.get("type") or "").strip("\x08 \t") or None
    fields = {"kudge": kudge}
    if gold is not None:
        fields["gold_mean"] = gold   # exact: `report` correlates against it, as KUDGE does
    gold_score = round_half_up(gold) if gold is not None else None
    # `raw` is what `score --server` sends: the record in prom-local's JSON shape (the server has no CSV).
    raw = {"instruction": query.instruction, "response": query.response, "rubric": query.rubric.as_dict(),
           "reference_answer": query.reference_answer, "gold_score": gold_score}
    return Record(id=str(index), instruction=query.instruction, response=query.response, rubric=query.rubric,
                  reference_answer=query.reference_answer, gold_score=gold_score, line=line,
                  row_fields=fields, raw=raw)


def _pairwise(row: dict[str, str], text: str, index: int, line: int) -> RelativeRecord:
    try:
        instruction, a, b = parse_pairwise(text)
    except ParseError as exc:
        raise ParseError(str(exc), "judge_query") from None
    winner = (row.get("winner") or "").strip().upper()
    if winner not in ("A", "B", ""):
        raise ParseError(f'must be "A" or "B", got {row["winner"][:20]!r}', "winner")
    raw = {"instruction": instruction, "response_A": a, "response_B": b, "rubric": PAIRWISE_CRITERIA,
           "gold_winner": winner or None}
    return RelativeRecord(id=str(index), instruction=instruction, response_A=a, response_B=b,
                          rubric=PAIRWISE_CRITERIA, gold_winner=winner or None, line=line, raw=raw)
