"""Relative grading on a real llama.cpp model (SmolLM2-135M, CPU): a verdict the model writes, with
P(A), P(B) read where it wrote it; a forced choice when it writes none; prometheus-eval's
relative_grade call; and `score --both-orders` rows."""

import json

import pytest

from helpers import invoke, judge_on, read_jsonl, write_jsonl
from prom_local import PromptProfile, SamplingParams
from prom_local.judging.prompts import LABELS
from prom_local.judging.records import record_from_mapping

pytestmark = pytest.mark.slow  # every test here decodes with the real model

# Renormalised over two labels in float64: they sum to 1 up to rounding.
SUM_TOLERANCE = 1e-9

# A profile that makes the 135M model copy a verdict, so the "model wrote it" path runs for real
# (prometheus-2's task is far beyond it: with short budgets it is forced, which the next tests use).
COPY = PromptProfile(
    name="copy-pair-test", system="unused", user_with_reference="unused", user_without_reference="unused",
    relative_system="You repeat the user's text exactly, nothing else.",
    relative_with_reference="Repeat exactly: {reference_answer}",
    relative_without_reference="Repeat exactly: The answer is right. [RESULT] A",
    score_continuation="\n[RESULT] ")

PAIR = {"id": "p1", "instruction": "What is 2 + 2?", "response_A": "4.", "response_B": "5.",
        "rubric": "Is the answer correct?", "gold_winner": "A"}


# Both on the session's shared SmolLM2 engine (conftest.py): they only read it.
@pytest.fixture(scope="module")
def copy_judge(smollm2_engine):
    return judge_on(smollm2_engine, profile=COPY, sampling=SamplingParams(max_tokens=16))


@pytest.fixture(scope="module")
def p2_judge(smollm2_engine):
    return judge_on(smollm2_engine, profile="prometheus-2", sampling=SamplingParams(max_tokens=3))


def test_model_written_verdict_with_probabilities_at_the_verdict(copy_judge):
    grade = copy_judge.grade(record_from_mapping(PAIR, line=1))
    row = grade.to_row()
    assert grade.output.endswith("[RESULT] A"), grade.output
    assert row["mode"] == "relative" and row["winner"] == "A" and row["forced"] is False
    p = row["probabilities"]
    assert p["A"] + p["B"] == pytest.approx(1.0, abs=SUM_TOLERANCE + 1e-6)   # +1e-6: the row rounds
    # Greedy decoding wrote "A" there, so A outweighs B at that position.
    assert p["A"] > p["B"] and 0 < row["label_mass"] <= 1
    assert row["gold_winner"] == "A" and row["feedback"] == "The answer is right."


def test_forced_choice_when_the_output_has_no_verdict(p2_judge):
    grade = p2_judge.grade(record_from_mapping(PAIR, line=1))
    assert grade.finish_reason == "length" and "[RESULT]" not in grade.output
    assert grade.forced and grade.completion_tokens == 3
    assert sum(grade.probabilities) == pytest.approx(1.0, abs=SUM_TOLERANCE)
    # The choice is the model's own next token after the appended marker: the likelier label.
    assert grade.winner == LABELS[max(range(2), key=lambda i: grade.probabilities[i])]
    assert 0 < grade.label_mass <= 1


def test_prometheus_eval_compatible_relative_grade(p2_judge):
    feedbacks, winners = p2_judge.relative_grade(
        instructions=["What is 2 + 2?", "Name a colour."], responses_A=["4.", "Blue."],
        responses_B=["5.", "Seven."], rubric="Is the answer correct?", reference_answers=["4", None])
    assert len(feedbacks) == 2 and all(w in ("A", "B") for w in winners)
    with pytest.raises(ValueError):
        p2_judge.relative_grade(instructions=["q"], responses_A=["a"], responses_B=[], rubric="r")


def test_relative_on_an_absolute_only_profile_is_a_clear_error(smollm2, tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", [PAIR])
    result = invoke("score", str(src), "-o", str(tmp_path / "out.jsonl"), "--model", str(smollm2),
                    "--max-tokens", "2", "--ctx", "1024", "--gpu-layers", "0")
    assert result.returncode == 2, result.stderr
    assert "prompt profile 'prometheus-ko' has no relative (pairwise) prompt" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_both_orders_rows(smollm2, tmp_path):
    absolute = {"id": "abs", "instruction": "What is 2 + 2?", "response": "4.",
                "rubric": {"criteria": "Correct?", **{f"score{s}_description": f"level {s}" for s in range(1, 6)}}}
    src = write_jsonl(tmp_path / "pairs.jsonl", [{**PAIR, "reference_answer": "4"}, absolute])
    out = tmp_path / "out.jsonl"
    result = invoke("score", str(src), "-o", str(out), "--model", str(smollm2), "--profile", "prometheus-2",
                    "--both-orders", "--max-tokens", "3", "--ctx", "1024", "--gpu-layers", "0", "--parallel", "2",
                    "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = {row["id"]: row for row in read_jsonl(out)}
    assert set(rows) == {"p1", "abs"}
    assert "mode" not in rows["abs"] and rows["abs"]["score"] in (1, 2, 3, 4, 5)   # absolute rows unchanged
    row = rows["p1"]
    assert row["mode"] == "relative" and row["error"] is None
    assert [o["order"] for o in row["orders"]] == ["AB", "BA"]
    winners = [o["winner"] for o in row["orders"]]
    assert all(w in ("A", "B") for w in winners)
    for order in row["orders"]:
        assert order["forced"] is True     # 3 tokens: neither order wrote a verdict
        probs = order["probabilities"]
        assert probs["A"] + probs["B"] == pytest.approx(1.0, abs=1e-5)   # rows round to 6 places
        assert order["winner"] == max(probs, key=probs.get)
    assert row["consistent"] is (winners[0] == winners[1])
    assert row["tie"] is (not row["consistent"])
    assert row["winner"] == (winners[0] if row["consistent"] else None)
    assert row["probabilities"]["A"] == pytest.approx(
        (row["orders"][0]["probabilities"]["A"] + row["orders"][1]["probabilities"]["A"]) / 2, abs=1e-5)
    assert rows["p1"]["gold_winner"] == "A"
    # The B/A sequence's prompt starts like the A/B one's (system prompt and instruction): the
    # prefix cache serves it instead of recomputing it.
    assert rows["p1"]["reused_prompt_tokens"] > 0
    json.dumps(rows)   # plain JSON throughout
