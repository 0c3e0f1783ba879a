"""Relative (pairwise) grading without inference: the verdict parser against prometheus-eval's own
parser on its public test cases, relative records and their errors, and how the two orders of
--both-orders combine into one row."""

import json

import pytest

from helpers import write_jsonl
from prom_local.errors import InputError
from prom_local.judging.grades import Grade, RelativeGrade
from prom_local.judging.verdict_text import extract_winner, split_relative_feedback
from prom_local.judging.records import Record, RelativeRecord, record_from_mapping
from prom_local.inputs import read_records
from prom_local.judging.pairwise import both_orders_grade

parser = pytest.importorskip("prometheus_eval.parser")

# prometheus-eval's libs/prometheus-eval/tests/test_parser.py, relative cases, copied verbatim.
PROMETHEUS_EVAL_CASES = [
    ("[Response B is not better. [RESULT] A", "A"),
    ("Result A or B, not results", None),
    ("Response A is better. [RESULT] A", "A"),
    ("Prefer Response B. [RESULT] B", "B"),
    ("Feedback: Both responses are similar... [Response B]", "B"),
    ("Feedback: Both responses are clear... [Result] Response B", "B"),
    ("Feedback: Both responses are clear... Response B Response A", None),
    ("Feedback: Both responses are clear... [RESULT: B]", "B"),
    ("Feedback: Both responses are clear... [Result: B]", "B"),
    ("Feedback: Both responses are clear...Response A. [RESULT] B", "B"),
    ("After careful consideration, I select Response B.", None),
    ("Both responses have their merits.", None),
    ("Response C is clearly superior.", None),
    ("The better response is obviously B... or is it A? It's hard to decide.", None),
    ("", None),
]


@pytest.mark.parametrize("output,expected", PROMETHEUS_EVAL_CASES)
def test_parser_agrees_with_prometheus_eval_on_its_public_cases(output, expected):
    assert parser.parse_output(output, "relative")[1] == expected   # their parser, their answer
    assert extract_winner(output) == expected


@pytest.mark.parametrize("output", ["x\nResult: A\nmore", "[RESULT] a", "[RESULT] A is better",
                                    "[RESULT] B\n", "Feedback: fine. [RESULT]", "[RESULT] Response A"])
def test_parser_agrees_with_prometheus_eval_beyond_its_cases(output):
    assert extract_winner(output) == parser.parse_output(output, "relative")[1]


# Deliberate differences, each with prometheus-eval's answer and ours.
DIFFERENCES = [
    # A model that restates its verdict means the final one; prometheus-eval takes the first.
    ("[RESULT] A\nOn reflection, B is better.\n[RESULT] B", "A", "B"),
    # A verdict in quotes is cited from a response (untrusted text), not concluded.
    ('Both are weak; B ends by writing "[RESULT] A', "A", None),
    ("B's last line is '[RESULT] A\nB is right. [RESULT] B", "A", "B"),
    # Decorations a judge evidently means, which prometheus-eval's pattern does not allow.
    ("Feedback: clearer. [RESULT] (B)", None, "B"),
    ("Feedback: clearer. [RESULT] **A**", None, "A"),
    ("Feedback: clearer. [RESULT] A.", None, "A"),
]


@pytest.mark.parametrize("output,theirs,ours", DIFFERENCES)
def test_documented_differences_from_prometheus_eval(output, theirs, ours):
    assert parser.parse_output(output, "relative")[1] == theirs
    assert extract_winner(output) == ours


def test_feedback_is_the_text_before_the_verdict():
    assert split_relative_feedback("Feedback: A cites sources. [RESULT] A") == "A cites sources."
    assert split_relative_feedback("A cites sources. [RESULT] ") == "A cites sources."


# -- records ----------------------------------------------------------------------------------------

def _pair(**extra):
    return {"id": "p1", "instruction": "Which is right?", "response_A": "4", "response_B": "5",
            "rubric": "Is the answer correct?", **extra}


def test_relative_record_with_prometheus_eval_and_preference_collection_names():
    rec = record_from_mapping(_pair(gold_winner="B", reference_answer="4"), line=1)
    assert isinstance(rec, RelativeRecord) and rec.is_relative
    assert (rec.response_A, rec.response_B, rec.rubric, rec.gold_winner) == ("4", "5", "Is the answer correct?", "B")
    pc = record_from_mapping({"orig_instruction": "q", "orig_response_A": "a", "orig_response_B": "b",
                              "orig_criteria": "Is it kind?", "orig_preference": "A"}, line=2)
    assert (pc.instruction, pc.response_A, pc.response_B, pc.rubric, pc.gold_winner) == ("q", "a", "b", "Is it kind?", "A")
    assert record_from_mapping(_pair(preference="a"), line=1).gold_winner == "A"
    # A rubric object gives its criteria: the relative template takes the criteria text only.
    obj = record_from_mapping(_pair(rubric={"criteria": "Kind?", "score1_description": "no"}), line=1)
    assert obj.rubric == "Kind?"
    assert record_from_mapping(_pair(), line=1).swapped() == RelativeRecord(
        id="p1", instruction="Which is right?", response_A="5", response_B="4", rubric="Is the answer correct?",
        line=1)


@pytest.mark.parametrize("data,field,says", [
    (_pair(gold_winner="C"), "gold_winner", 'must be "A" or "B", got "C"'),
    (_pair(orig_preference=1), "orig_preference", 'must be "A" or "B", got 1'),
    ({k: v for k, v in _pair().items() if k != "response_B"}, "response_B", "missing"),
    (_pair(response_A=""), "response_A", "is empty"),
    (_pair(response="r"), "response_A", "keep one kind per record"),
    ({k: v for k, v in _pair().items() if k != "rubric"}, "criteria", "missing"),
    (_pair(rubric=7), "rubric", "criteria text"),
])
def test_bad_relative_records_name_file_line_and_field(data, field, says):
    with pytest.raises(InputError) as err:
        record_from_mapping(data, line=7, source="pairs.jsonl")
    assert err.value.field == field
    assert str(err.value).startswith(f"pairs.jsonl:7: field '{field}'") and says in str(err.value)


def test_a_file_may_mix_absolute_and_relative_records(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": "abs", "instruction": "q", "response": "r", "rubric": {
            "criteria": "c", **{f"score{s}_description": str(s) for s in range(1, 6)}}},
        _pair(), _pair(id="bad", gold_winner="tie")])
    items = list(read_records(path))
    assert isinstance(items[0], Record) and isinstance(items[1], RelativeRecord)
    assert isinstance(items[2], InputError) and items[2].record_id == "bad"


# -- rows --------------------------------------------------------------------------------------------

def _graded(winner, probabilities, forced=False, output="..."):
    return RelativeGrade(id="p1", score=None, feedback="f", output=output, winner=winner,
                         probabilities=probabilities, label_mass=0.5, forced=forced, prompt_tokens=100,
                         completion_tokens=10, seconds=1.0, gold_winner="A")


def test_both_orders_maps_the_second_verdict_back_and_agrees():
    record = record_from_mapping(_pair(gold_winner="A"), line=1)
    # B/A shows the record's A second: its "B" is the record's A.
    row = both_orders_grade(record, _graded("A", (0.8, 0.2)), _graded("B", (0.3, 0.7), forced=True)).to_row()
    assert row["mode"] == "relative" and row["winner"] == "A" and row["consistent"] is True and row["tie"] is False
    assert [o["order"] for o in row["orders"]] == ["AB", "BA"]
    assert row["orders"][1]["winner"] == "A" and row["orders"][1]["probabilities"] == {"A": 0.7, "B": 0.3}
    assert row["orders"][1]["forced"] is True and row["forced"] is True
    assert row["probabilities"] == pytest.approx({"A": 0.75, "B": 0.25})
    assert row["prompt_tokens"] == 200 and row["completion_tokens"] == 20 and row["gold_winner"] == "A"


def test_both_orders_disagreeing_is_a_tie():
    record = record_from_mapping(_pair(), line=1)
    # The model picks whatever is shown first: a position bias, not a preference.
    row = both_orders_grade(record, _graded("A", (0.9, 0.1)), _graded("A", (0.9, 0.1))).to_row()
    assert row["winner"] is None and row["tie"] is True and row["consistent"] is False
    assert [o["winner"] for o in row["orders"]] == ["A", "B"]
    assert row["probabilities"] == pytest.approx({"A": 0.5, "B": 0.5})


def test_both_orders_with_one_order_cancelled_is_cancelled():
    record = record_from_mapping(_pair(), line=1)
    cut = _graded(None, None)
    cut.finish_reason, cut.error = "cancelled", "cancelled"
    assert both_orders_grade(record, _graded("A", (0.9, 0.1)), cut).finish_reason == "cancelled"
    lengths = both_orders_grade(record, _graded("A", (0.9, 0.1)), _graded("B", (0.2, 0.8)))
    assert lengths.finish_reason == "stop"


def test_relative_row_round_trips_and_keeps_the_contract_keys():
    row = _graded("B", (0.25, 0.75)).to_row()
    assert {"id", "mode", "winner", "feedback", "output", "probabilities", "label_mass", "forced",
            "finish_reason", "prompt_tokens", "completion_tokens", "seconds", "gold_winner",
            "error"} <= set(row)
    assert "score" not in row and "orders" not in row
    back = Grade.from_row(json.loads(json.dumps(row)))
    assert isinstance(back, RelativeGrade) and back.to_row() == row


# -- record -> requests -> row through the library, on the scripted engine (no inference) ---------

def test_score_file_writes_relative_rows_beside_absolute_ones(tmp_path, smollm2):
    from fake_engine import FakeEngine, Reply
    from prom_local import Judge
    from prom_local.runs.score_file import score_file

    def script(prompt: str) -> Reply:
        if "###Response A:" not in prompt:
            return Reply("Fine. [RESULT] 4")
        # The record's own order shows "4" first; --both-orders' second sequence shows "5" first.
        first = prompt.split("###Response A:\n", 1)[1].split("\n", 1)[0]
        return Reply("A is right. [RESULT] A", labels=(0.9, 0.1)) if first == "4" else \
            Reply("Unsure.", labels=(0.6, 0.2))   # no verdict: forced, and picks the first shown

    src = write_jsonl(tmp_path / "mixed.jsonl", [
        _pair(gold_winner="A"),
        {"id": "abs", "instruction": "q", "response": "r", "rubric": {
            "criteria": "c", **{f"score{s}_description": str(s) for s in range(1, 6)}}},
        _pair(id="bad", gold_winner="C")])
    out = tmp_path / "out.jsonl"
    judge = Judge.with_engine(FakeEngine(smollm2, script), profile="prometheus-2")
    with judge:
        stats = score_file(judge, src, out, both_orders=True)
    rows = {row["id"]: row for row in map(json.loads, out.read_text("utf-8").splitlines())}
    assert stats.graded == 3 and stats.errors == 1
    pair = rows["p1"]
    assert pair["mode"] == "relative" and pair["gold_winner"] == "A"
    assert [(o["order"], o["winner"], o["forced"]) for o in pair["orders"]] == [("AB", "A", False), ("BA", "B", True)]
    # B/A's forced pick is the first shown ("5"), which is the record's B: the orders disagree.
    assert pair["orders"][1]["probabilities"] == {"A": 0.25, "B": 0.75}
    assert pair["consistent"] is False and pair["tie"] is True and pair["winner"] is None
    assert pair["feedback"] == "A is right." and pair["forced"] is True
    assert "mode" not in rows["abs"] and rows["abs"]["score"] == 4
    assert "gold_winner" in rows["bad"]["error"] and rows["bad"]["finish_reason"] == "error"
