"""Drafts from the prompt (--draft): prompt-lookup speculative decoding.

Fast lane: the n-gram lookup on made-up tokens, and the acceptance rule, exactly (the standard
speculative-sampling rule for a point-mass draft gives back p) and statistically (accept_drafts
follows that rule). Slow lane, real SmolLM2 on CPU: drafts leave greedy text, scores and verdict
probabilities unchanged on the built-in Korean records at --parallel 1 and 2, drafts really are
accepted (else the test would prove nothing), seeded `--samples` draw the same tokens with drafts
on and off, and forced verdicts still come from the right logits row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from assets import smollm2_gguf
from prom_local import Judge
from prom_local.bench import bench_records
from prom_local.engine import Engine, EngineConfig, GenRequest, SamplingParams
from prom_local.engine.drafts import NgramIndex, accept_drafts, draft_default

slow = pytest.mark.slow


# -- the lookup ----------------------------------------------------------------------------------

def test_lookup_copies_what_followed_the_last_ngram():
    index = NgramIndex([1, 2, 3, 4, 5, 6, 9, 2, 3])
    assert index.draft(3) == [4, 5, 6]          # "2 3" was followed by 4 5 6
    assert index.draft(10) == [4, 5, 6, 9, 2, 3]  # up to the end of what is known
    assert index.draft(0) == []


def test_lookup_prefers_the_longest_ngram_then_the_latest_occurrence():
    # "7 8" occurs twice; the 3-gram "6 7 8" only once, followed by 50: the longer context wins.
    index = NgramIndex([6, 7, 8, 50, 1, 7, 8, 60, 2, 6, 7, 8])
    assert index.draft(1) == [50]
    # Without a 3-gram match, the latest "7 8" (followed by 60) is copied.
    index = NgramIndex([6, 7, 8, 50, 1, 7, 8, 60, 2, 5, 7, 8])
    assert index.draft(2) == [60, 2]


def test_lookup_grows_with_accepted_tokens_and_finds_nothing_new():
    index = NgramIndex([10, 11, 12])
    assert index.draft(4) == []                 # no earlier occurrence of "11 12"
    index.extend([13, 10, 11])
    assert index.draft(4) == [12, 13, 10, 11]
    index.extend([99])
    assert index.draft(4) == []                 # "11 99" never occurred
    assert NgramIndex([5]).draft(2) == [] and NgramIndex([]).draft(2) == []


def test_lookup_sizes_and_the_default():
    unigram = NgramIndex([4, 8, 4], min_n=1)
    assert unigram.draft(2) == [8, 4]
    assert NgramIndex([4, 8, 4]).draft(2) == []  # a single token is too weak a context by default
    with pytest.raises(ValueError, match="min_n"):
        NgramIndex([], max_n=1, min_n=2)
    assert draft_default(None, 0) == 0 and draft_default(None, -1) > 0 and draft_default(3, 0) == 3


# -- the acceptance rule -------------------------------------------------------------------------

P = np.array([0.5, 0.2, 0.2, 0.1])


def standard_rule(p: np.ndarray, t: int) -> np.ndarray:
    """The distribution of the token speculative sampling emits for a draft t proposed by q, a
    point mass on t: accept with min(1, p(t)/q(t)), else draw from norm(max(0, p - q))."""
    q = np.zeros_like(p)
    q[t] = 1.0
    accept = min(1.0, p[t] / q[t])
    residual = np.maximum(0.0, p - q)
    return accept * q + (1 - accept) * residual / residual.sum()


@pytest.mark.parametrize("t", range(len(P)))
def test_the_standard_rule_gives_back_p_for_a_point_mass_draft(t):
    assert standard_rule(P, t) == pytest.approx(P, abs=1e-15)


def test_accept_drafts_follows_the_rule_statistically():
    """accept_drafts with a sampler drawing from P: the draft is accepted with probability p(t),
    a rejection emits p without t renormalised, and the emitted token is distributed as P."""
    rng = np.random.default_rng(0)
    n, t = 20000, 1
    emitted, accepted = np.zeros(len(P)), 0
    for _ in range(n):
        drawn = []
        a, rows = accept_drafts([t, 3], lambda i: drawn.append(int(rng.choice(len(P), p=P))) or drawn[-1])
        accepted += a > 0
        emitted[drawn[0]] += 1
        assert rows == len(drawn) and a == rows - 1 and (a == 0) == (drawn[0] != t)
    sigma = np.sqrt(P * (1 - P) / n)
    assert np.all(np.abs(emitted / n - P) < 5 * sigma)
    assert abs(accepted / n - P[t]) < 5 * sigma[t]
    rejected = np.delete(emitted, t) / (n - accepted)
    assert rejected == pytest.approx(np.delete(P, t) / (1 - P[t]), abs=0.02)


def test_accept_drafts_counts_rows_to_keep():
    assert accept_drafts([5, 6, 7], lambda i: [5, 6, 7, 8][i]) == (3, 4)   # all accepted + its own
    assert accept_drafts([5, 6, 7], lambda i: [5, 9][i]) == (1, 2)         # mismatch at the second
    assert accept_drafts([5, 6, 7], lambda i: [5, None][i]) == (1, 2)      # the request ended there
    assert accept_drafts([], lambda i: 4) == (0, 1)


# -- the engine, on SmolLM2 ----------------------------------------------------------------------

def _judge(parallel: int, draft: int, max_tokens: int = 48) -> Judge:
    # One thread: these tests share the machine (see test_parallel.py).
    return Judge(smollm2_gguf(), engine=EngineConfig(n_ctx=2560, gpu_layers=0, n_threads=1, n_parallel=parallel,
                                                     draft=draft, host_cache_mib=0),
                 sampling=SamplingParams(max_tokens=max_tokens))


def _grades(parallel: int, draft: int):
    with _judge(parallel, draft) as judge:
        grades = list(judge.grade_stream(bench_records(3)))
        return grades, judge.engine.stats


@slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_drafts_leave_greedy_output_unchanged(parallel):
    off, off_stats = _grades(parallel, 0)
    on, on_stats = _grades(parallel, 8)
    assert off_stats.drafted_tokens == 0 and on_stats.accepted_tokens > 0   # drafts were really used
    assert on_stats.steps < off_stats.steps                                  # and saved decode steps
    assert [g.output for g in on] == [g.output for g in off]
    assert [(g.score, g.forced, g.completion_tokens) for g in on] == [(g.score, g.forced, g.completion_tokens)
                                                                      for g in off]
    for a, b in zip(on, off):   # the verdict probabilities: read from the same row's logits
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    assert sum(g.extra["accepted_tokens"] for g in on) == on_stats.accepted_tokens
    assert all("drafted_tokens" not in g.extra for g in off)   # rows without drafts as before


CHAT = ("<|im_start|>user\nRepeat this list twice: apples, pears, plums, cherries, grapes, lemons."
        "<|im_end|>\n<|im_start|>assistant\n")


@slow
def test_seeded_samples_draw_the_same_tokens_with_drafts():
    """--samples with drafts on: one draw per emitted token either way (accept_drafts), so the same
    seeds give the same samples; and the penalty sees every accepted draft."""
    params = SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, seed=3, max_tokens=40, n=3)
    outs = {}
    for draft in (0, 6):
        config = EngineConfig(n_ctx=512, n_parallel=3, gpu_layers=0, n_threads=1, draft=draft, host_cache_mib=0)
        with Engine(smollm2_gguf(), config) as engine:
            tokens = engine.model.tokenize(CHAT)
            outs[draft] = engine.submit(GenRequest(tokens=tokens, params=params)).results()
            accepted = engine.stats.accepted_tokens
    assert accepted > 0
    assert [o.index for o in outs[6]] == [0, 1, 2]
    assert [o.tokens for o in outs[6]] == [o.tokens for o in outs[0]]
    assert len({tuple(o.tokens) for o in outs[6]}) > 1   # really sampled


@slow
def test_forced_verdicts_and_samples_through_the_judge_with_drafts():
    """The judge's --samples path and its forced-score continuation with drafts on: every sample is
    scored (forced where the model wrote no verdict within max_tokens)."""
    sampling = replace(SamplingParams(temperature=1.0, top_p=0.9, seed=1, max_tokens=24), n=2)
    config = EngineConfig(n_ctx=2560, gpu_layers=0, n_threads=1, n_parallel=2, draft=6, host_cache_mib=0)
    with Judge(smollm2_gguf(), engine=config, sampling=sampling) as judge:
        grades = list(judge.grade_stream(bench_records(2)))
    assert len(grades) == 2
    for grade in grades:
        assert grade.error is None and grade.score is not None and len(grade.extra["scores"]) == 2
