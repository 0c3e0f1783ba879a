import io
import json

import pytest

from helpers import RUBRIC, write_jsonl
from prom_local.errors import InputError
from prom_local.judging.records import Record, record_from_mapping
from prom_local.inputs import read_records
from prom_local.judging.rubrics import Rubric


def test_feedback_collection_columns(card_sample):
    rec = record_from_mapping(card_sample["record"], line=3, source="f.jsonl")
    assert rec.id == "3"                      # no id: the line number
    assert rec.instruction.startswith("나는 첨단")
    assert rec.has_reference
    assert rec.gold_score == 1
    assert rec.rubric.criteria == card_sample["record"]["orig_criteria"]
    assert rec.rubric.descriptions[4] == card_sample["record"]["orig_score5_description"]


def test_plain_names_rubric_object_and_string():
    a = record_from_mapping({"id": 7, "instruction": "q", "response": "a", "rubric": RUBRIC, "score": "4"}, line=1)
    assert (a.id, a.gold_score, a.reference_answer) == ("7", 4, None)
    text = "[" + RUBRIC["criteria"] + "]\n" + "\n".join(
        f"Score {s}: {RUBRIC[f'score{s}_description']}" for s in range(1, 6))
    b = record_from_mapping({"instruction": "q", "response": "a", "rubric": text}, line=1)
    assert b.rubric == a.rubric
    flat = {"instruction": "q", "response": "a", **RUBRIC}
    assert record_from_mapping(flat, line=1).rubric == a.rubric


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_absent_empty_or_null_reference_means_no_reference(reference):
    data = {"instruction": "q", "response": "a", "rubric": RUBRIC}
    if reference is not None:
        data["reference_answer"] = reference
    assert not record_from_mapping(data, line=1).has_reference


@pytest.mark.parametrize("data, field, message", [
    ({"instruction": "q", "rubric": RUBRIC}, "response", "missing"),
    ({"orig_instruction": "q", "orig_response": "", "orig_criteria": "c"}, "orig_response", "empty"),
    ({"instruction": 5, "response": "a", "rubric": RUBRIC}, "instruction", "must be a string"),
    ({"instruction": "q", "response": "a"}, "rubric", "missing"),
    ({"instruction": "q", "response": "a", "rubric": {**RUBRIC, "score3_description": ""}},
     "rubric.score3_description", "missing or empty"),
    ({"orig_instruction": "q", "orig_response": "a", "orig_criteria": "c", "orig_score1_description": "x"},
     "orig_score2_description", "missing or empty"),
    ({"instruction": "q", "response": "a", "rubric": RUBRIC, "score": 7}, "score", "integer 1-5"),
    ({"instruction": "q", "response": "a", "rubric": RUBRIC, "score": [5, 5, 5]}, "score", "integer 1-5"),
    ({"instruction": "q", "response": "a", "rubric": RUBRIC, "id": {"x": 1}}, "id", "string or an integer"),
])
def test_errors_name_file_line_and_field(data, field, message):
    with pytest.raises(InputError) as exc:
        record_from_mapping(data, line=12, source="in.jsonl")
    assert exc.value.field == field
    assert str(exc.value).startswith(f"in.jsonl:12: field '{field}'")
    assert message in str(exc.value)


def test_one_bad_line_never_stops_the_others(tmp_path):
    good = {"instruction": "q", "response": "a", "rubric": RUBRIC}
    path = write_jsonl(tmp_path / "in.jsonl", [good, "{not json", "", "[1, 2]", {**good, "id": "x"},
                                               {"id": "y", "response": "a"}])
    items = list(read_records(path))
    assert [type(i).__name__ for i in items] == ["Record", "InputError", "InputError", "Record", "InputError"]
    assert items[1].line == 2 and "invalid JSON" in str(items[1])
    assert items[2].line == 4 and "JSON object" in str(items[2])
    assert items[3].id == "x" and items[3].line == 5
    assert items[4].record_id == "y" and items[4].field == "instruction"


def test_stdin_and_missing_file(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(json.dumps({"instruction": "q", "response": "a", "rubric": RUBRIC}).encode())))
    (rec,) = list(read_records("-"))
    assert isinstance(rec, Record) and rec.line == 1
    with pytest.raises(InputError, match="no such file"):
        list(read_records("/nonexistent/in.jsonl"))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps({"instruction": "q", "response": "a", "rubric": RUBRIC}).encode() + b"\n\xff\xfe\n")
    items = list(read_records(path))
    assert isinstance(items[0], Record)
    assert isinstance(items[1], InputError) and items[1].line == 2 and "UTF-8" in str(items[1])


def test_rubric_round_trip():
    r = Rubric.from_mapping(RUBRIC)
    assert Rubric.from_mapping(r.as_dict()) == r
