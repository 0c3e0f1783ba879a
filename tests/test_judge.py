"""The judge on a real llama.cpp model (SmolLM2-135M, CPU): score position probabilities, forced
scores, over-long records, streaming, cancellation and the prometheus-eval compatible API."""

import threading

import numpy as np
import pytest
from llama_cpp import Llama

from helpers import RUBRIC, judge_on, short_record
from prom_local import EngineConfig, Judge, PromptProfile, SamplingParams
from prom_local.engine import EXACT_TAIL
from prom_local.judging.records import record_from_mapping

pytestmark = pytest.mark.slow  # every test here decodes with the real model

# A profile that makes a 135M model reliably copy a verdict, so the "model wrote a score" path is
# exercised for real; the Korean Prometheus profile on this tiny model mostly needs forcing.
COPY = PromptProfile(name="copy-test", system="You repeat the user's text exactly, nothing else.",
                     user_with_reference="{reference_answer}",
                     user_without_reference="Repeat exactly: The answer is right. [RESULT] 4",
                     score_continuation="\n[RESULT] ")


# Both on the session's shared SmolLM2 engine (conftest.py): they only read it.
@pytest.fixture(scope="module")
def copy_judge(smollm2_engine):
    return judge_on(smollm2_engine, profile=COPY, sampling=SamplingParams(max_tokens=24))


@pytest.fixture(scope="module")
def ko_judge(smollm2_engine):
    return judge_on(smollm2_engine, sampling=SamplingParams(max_tokens=12))


def _rec(reference=None, **kw):
    return record_from_mapping({"instruction": "x", "response": "y", "rubric": RUBRIC,
                                "reference_answer": reference, **kw}, line=1)


def _reference_probabilities(model_path, prompt, generated, candidates):
    """Independent check with llama-cpp-python's high-level Llama: P(candidates | prompt+generated),
    evaluated like the engine does (prompt in one batch, then one token at a time) so the same
    llama.cpp kernels run and the numbers can be compared tightly."""
    llm = Llama(str(model_path), n_ctx=512, n_gpu_layers=0, verbose=False, logits_all=True)
    llm.eval(prompt)
    for token in generated:
        llm.eval([token])
    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    llm.close()
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return probs[candidates]


def test_model_written_score_with_probabilities_at_the_score_position(copy_judge, smollm2):
    grade = copy_judge.grade(_rec())
    assert grade.output == "The answer is right. [RESULT] 4"
    assert grade.score == 4 and not grade.forced and grade.finish_reason == "stop"
    assert sum(grade.probabilities) == pytest.approx(1.0)
    assert int(np.argmax(grade.probabilities)) + 1 == 4
    # Same numbers from llama-cpp-python's own API at the position after "[RESULT]".
    prompt = copy_judge.tokenize_prompt(_rec())
    before_digit = copy_judge.model.tokenize(grade.output[:grade.output.rindex("4")], special=False)
    ids = copy_judge.score_tokens.probe_ids
    raw = _reference_probabilities(smollm2, prompt, before_digit, ids)
    per_score, mass = copy_judge.score_tokens.distribution(raw)
    # Not bit-equal: the two contexts differ in settings like flash attention. A wrong position
    # would be off by orders of magnitude (P(digit) right after "]" is ~0.0005 here).
    assert grade.score_mass == pytest.approx(mass, abs=0.01)
    assert grade.probabilities == pytest.approx(per_score, abs=0.03)


def test_forced_score_when_the_model_writes_none(copy_judge):
    grade = copy_judge.grade(_rec(reference="Say: Fine."))
    assert "[RESULT]" not in grade.output
    assert grade.forced and grade.score in (1, 2, 3, 4, 5)
    assert grade.score == int(np.argmax(grade.probabilities)) + 1
    assert 0 < grade.score_mass <= 1


def test_forced_after_max_tokens_on_the_korean_profile(ko_judge):
    grade = ko_judge.grade(record_from_mapping(short_record(1), line=1))
    assert grade.finish_reason in ("length", "stop") and grade.completion_tokens <= 12
    assert grade.score in (1, 2, 3, 4, 5) and grade.probabilities is not None
    assert grade.forced == (grade.score is not None and "[RESULT]" not in grade.output)


def test_greedy_is_deterministic_and_stream_equals_output(ko_judge):
    record = record_from_mapping(short_record(2), line=1)
    pieces = []
    first = ko_judge.grade(record, on_token=pieces.append)
    second = ko_judge.grade(record)
    assert "".join(pieces) == first.output == second.output
    # The second run reuses the cached prompt but for its last tokens (EXACT_TAIL, or the flash
    # attention kernel's 64-row tile when it is on), which are decoded together as in the cold run
    # (fewer rows would go through another kernel and round differently): the same probabilities,
    # bit for bit.
    tail = ko_judge.engine.exact_tail
    assert tail == (64 if ko_judge.engine.flash_attn else EXACT_TAIL)
    assert second.extra["reused_prompt_tokens"] == second.prompt_tokens - tail
    assert first.probabilities == second.probabilities


def test_overlong_record_is_an_error_row_not_a_crash(smollm2):
    # Its own engine (a context too small for the long record); one thread, as the shared one.
    with Judge(smollm2, engine=EngineConfig(n_ctx=450, gpu_layers=0, n_threads=1),
               sampling=SamplingParams(max_tokens=8)) as judge:
        long = record_from_mapping(short_record(1, response="아주 긴 응답입니다. " * 80), line=1)
        ok = record_from_mapping(short_record(2), line=2)
        grades = list(judge.grade_stream([long, ok]))
    assert grades[0].error and "tokens" in grades[0].error and grades[0].prompt_tokens > 450
    assert grades[0].score is None
    assert grades[1].error is None and grades[1].score in (1, 2, 3, 4, 5)


def test_cancel_stops_generation(ko_judge):
    cancel = threading.Event()
    seen = []

    def on_token(text):
        seen.append(text)
        cancel.set()

    grade = ko_judge.grade(record_from_mapping(short_record(3), line=1), on_token=on_token, cancel=cancel)
    assert grade.error == "cancelled" and grade.finish_reason == "cancelled"
    assert grade.completion_tokens == 1 and len(seen) == 1


def test_absolute_grade_matches_prometheus_eval_call(copy_judge):
    feedbacks, scores = copy_judge.absolute_grade(
        instructions=["x", "x"], responses=["y", "y"],
        rubric="[정확한가?]\nScore 1: a\nScore 2: b\nScore 3: c\nScore 4: d\nScore 5: e",
        reference_answers=[None, "Repeat exactly: Good answer. [RESULT] 2"],
        params={})
    assert scores == [4, 2]
    assert feedbacks[0] == "The answer is right." and feedbacks[1] == "Repeat exactly: Good answer."
    with pytest.raises(ValueError):
        copy_judge.absolute_grade(instructions=["x"], responses=[], rubric=RUBRIC)
