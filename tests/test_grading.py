import pytest

from prom_local.judging.grades import Grade, expected_score

from prom_local.judging.verdict_text import extract_score, split_feedback


@pytest.mark.parametrize("text, score", [
    ("Feedback: good.\n    [RESULT] 1", 1),                 # the card's own output shape
    ("좋은 응답이다. 따라서 전체 점수는 4이다.\n  [RESULT] 4", 4),
    ("[RESULT]5", 5),
    ("[RESULT]: 3", 3),
    ("[RESULT]\n\t2 and then some text", 2),
    ("[RESULT] 2 ... on reflection [RESULT] 3", 3),           # the last marker wins
    ("[RESULT] 4\nmore text [RESULT] (an integer)", 4),       # a trailing marker without a score
    ("[RESULT] 5.", 5),
    ("[RESULT] 5/5", 5),
    ("[result] 4", 4),                                        # any case of the marker
])
def test_extract_score(text, score):
    assert extract_score(text) == score


@pytest.mark.parametrize("text", [
    "", "no marker at all", "[RESULT]", "[RESULT] 0", "[RESULT] 6", "[RESULT] 10", "[RESULT] 4.5",
    "Score 4: the rubric text", "[RESULT] (an integer number between 1 and 5)",
])
def test_no_valid_score(text):
    assert extract_score(text) is None


def test_split_feedback():
    assert split_feedback("Feedback: 좋은 응답.\n    [RESULT] 4") == "좋은 응답."
    assert split_feedback("no score here") == "no score here"
    assert split_feedback("cut off [RESULT] ") == "cut off"
    assert split_feedback("a [RESULT] 2 b [RESULT] 5 tail") == "a [RESULT] 2 b"


def test_expected_score_and_row_round_trip():
    probs = (0.1, 0.2, 0.3, 0.2, 0.2)
    assert expected_score(probs) == pytest.approx(1 * .1 + 2 * .2 + 3 * .3 + 4 * .2 + 5 * .2)
    grade = Grade(id="a", score=3, feedback="f", output="o", probabilities=probs, score_mass=0.9,
                  forced=True, gold_score=2, extra={"reused_prompt_tokens": 7})
    row = grade.to_row()
    assert row["probabilities"] == {"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.2, "5": 0.2}
    assert row["expected_score"] == pytest.approx(3.2)
    assert row["reused_prompt_tokens"] == 7
    back = Grade.from_row(row)
    assert back.probabilities == pytest.approx(probs) and back.forced and back.extra == {"reused_prompt_tokens": 7}
