"""`extract_score` against prometheus-eval's own parser cases, and the false positives it must never give.

The cases below are the absolute-mode cases of prometheus-eval's `tests/test_parser.py` (0.1.20), with
the score prometheus-eval expects. prom-local agrees on every case that carries the `[RESULT]`
marker. It disagrees on purpose where there is no marker at all ("(Score 5)", "[Score 4]",
"score: 3", "score of 1"): the prompt the model reads is full of rubric lines such as
"Score 4: ...", so a bare "Score N" in the feedback is a quotation of the rubric as often as a
verdict. For those prom-local reports no score, and `Judge` then asks the model itself for one
(the forced continuation), which is a verdict rather than a guess.
"""

import pytest

from prom_local.judging.verdict_text import extract_score, split_feedback

# (output, prometheus-eval's expected score)
PROMETHEUS_EVAL_ABSOLUTE = [
    ("Reference (Score 5) two results [RESULT] 3", 3),
    ("Reference (Score 5) not results", None),
    ("Excellent. [RESULT] 5 out of 5", 5),
    ("Poor performance. [RESULT] score of 1", 1),
    ("Good job. [Result] 3", 3),
    ("Needs improvement. [Result] Score: 2", 2),
    ("Well done. [Result] Result: 4", 4),
    ("Average. [Result] 4/5", 4),
    ("Excellent. [Result] 5 out of 5", 5),
    ("Poor performance. [Result] score of 1", 1),
    ("Good job. (Score 5)", 5),
    ("Good job. [Score 4]", 4),
    ("Good job. score: 3", 3),
    ("Good job. Score: 3", 3),
    ("Good job. score of 1", 1),
    ("Good job. [RESULT] (5)", 5),
    ("The score is definitely not 3.", None),
    ("I rate this a perfect 10!", None),
    ("Score: 2.5", None),
    ("Result: A", None),
]
# Where prom-local differs on purpose: no [RESULT] marker, so no verdict (see the module docstring).
NO_MARKER = {"Good job. (Score 5)", "Good job. [Score 4]", "Good job. score: 3", "Good job. Score: 3",
             "Good job. score of 1"}


@pytest.mark.parametrize("output, theirs", PROMETHEUS_EVAL_ABSOLUTE)
def test_prometheus_eval_parser_cases(output, theirs):
    ours = extract_score(output)
    if output in NO_MARKER:
        assert ours is None
    else:
        assert ours == theirs


def test_agreement_count():
    agree = sum(extract_score(o) == s for o, s in PROMETHEUS_EVAL_ABSOLUTE)
    assert agree == len(PROMETHEUS_EVAL_ABSOLUTE) - len(NO_MARKER) == 15
    # and never a score where prometheus-eval finds none
    assert all(extract_score(o) is None for o, s in PROMETHEUS_EVAL_ABSOLUTE if s is None)


@pytest.mark.parametrize("text, score", [
    ("[RESULT: 4]", 4),
    ("**[RESULT]** 4", 4),
    ("[RESULT] 4점", 4),                                   # "4 points" in Korean
    ("[RESULT] 4\n- 2 items were missing", 4),            # a list after the verdict is not a range
    ('The answer "cites" a source. [RESULT] 2', 2),       # a quote that ends before the marker
    ('응답은 "[RESULT] 5"라고 썼지만 틀렸다. [RESULT] 1', 1),  # quoted verdict, then the real one
])
def test_decorated_verdicts(text, score):
    assert extract_score(text) == score


@pytest.mark.parametrize("text", [
    "[RESULT] 4/10", "[RESULT] 3 out of 10", "[RESULT] 3-4", "[RESULT] 3 ~ 4", "[RESULT] 2,5",
    "[RESULT] 4.5", "[RESULT] 10", "[RESULT] 0", "[RESULT] Score: 7",
    'The response ends with "[RESULT] 5" but gives no reasoning.',   # a marker quoted from the input
    "The response wrote `[RESULT] 5` itself.",
    "응답에 「[RESULT] 5」라는 문구가 있다.",
    "Score 4: the rubric text", "Feedback: the response deserves a 4.",
])
def test_never_a_false_positive(text):
    assert extract_score(text) is None


def test_feedback_stops_at_a_decorated_marker():
    assert split_feedback("Feedback: 좋다. [Result] Score: 4") == "좋다."
    assert split_feedback("Feedback: 좋다. [RESULT] (") == "좋다."
