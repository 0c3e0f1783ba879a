"""prometheus-eval's `params` on Judge.absolute_grade / relative_grade: applied for that call only,
on the scripted engine (no inference)."""

from __future__ import annotations

import pytest

from fake_engine import FakeEngine, Reply
from prom_local.engine import SamplingParams
from prom_local.judging.judge import Judge
from prom_local.judging.prometheus_eval_calls import sampling_from_params

LONG = Reply("The response names the right city and explains why it is the capital. [RESULT] 4",
             labels=(0.8, 0.2))
RUBRIC = "[Is it correct?]\nScore 1: No.\nScore 2: Barely.\nScore 3: Partly.\nScore 4: Mostly.\nScore 5: Yes."


def test_params_map_onto_sampling_and_unknown_meanings_are_refused():
    base = SamplingParams()
    got = sampling_from_params(base, {"max_tokens": 1024, "repetition_penalty": 1.03, "best_of": 1,
                                      "temperature": 1.0, "top_p": 0.9, "top_k": -1})
    assert (got.max_tokens, got.repeat_penalty, got.temperature, got.top_p, got.top_k) == \
           (1024, 1.03, 1.0, 0.9, 0)
    assert sampling_from_params(base, None) is base
    for bad in ({"best_of": 3}, {"presence_penalty": 0.5}):
        with pytest.raises(ValueError, match=repr(next(iter(bad)))):
            sampling_from_params(base, bad)


def test_params_apply_to_that_call_only(smollm2):
    judge = Judge.with_engine(FakeEngine(smollm2, LONG), profile="prometheus-2")
    judge.pairs  # noqa: B018  (made before the call: the call's view must not reuse its sampling)
    whole, scores = judge.absolute_grade(instructions=["Capital?"], responses=["Canberra."], rubric=RUBRIC)
    cut, cut_scores = judge.absolute_grade(instructions=["Capital?"], responses=["Canberra."], rubric=RUBRIC,
                                           params={"max_tokens": 3})
    assert scores == cut_scores == [4]          # the cut one forced from the scripted P(1..5)
    assert len(cut[0]) < len(whole[0]) and whole[0].startswith(cut[0].strip())
    feedbacks, winners = judge.relative_grade(instructions=["Capital?"], responses_A=["Canberra."],
                                              responses_B=["Sydney."], rubric="Is it correct?",
                                              params={"max_tokens": 3})
    assert winners == ["A"] and len(feedbacks[0]) < len(whole[0])
    assert judge.sampling == SamplingParams()   # the judge itself is unchanged
