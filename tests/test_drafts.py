"""Drafts from the prompt (--draft): prompt-lookup speculative decoding.

Fast lane: the n-gram lookup on made-up tokens, and the acceptance rule, exactly (the standard
speculative-sampling rule for a point-mass draft gives back p) and statistically (accept_drafts
follows that rule). Slow lane, real SmolLM2 on CPU: drafts leave greedy text and verdicts unchanged
on short Korean records at --parallel 1 and 2 but where the CPU's lone-token rounding flips
a near-tie (NEAR_TIE), drafts really are accepted (else the tests would prove nothing), drafted
greedy output and seeded `--samples` are exactly the model's own draws from one-batch logits of
their text, and forced verdicts still come from the right logits row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from assets import smollm2_gguf
from helpers import short_record
from prom_local import Judge
from prom_local.diagnostics.bench import bench_records
from prom_local.engine import Engine, EngineConfig, GenRequest, SamplingParams
from prom_local.engine.context import SamplerChain
from prom_local.engine.drafts import NgramIndex, accept_drafts, draft_default
from prom_local.judging.records import record_from_mapping

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

def _config(parallel: int, draft: int | None) -> EngineConfig:
    # One thread: these tests share the machine (see test_parallel.py).
    return EngineConfig(n_ctx=2560, gpu_layers=0, n_threads=1, n_parallel=parallel, draft=draft, host_cache_mib=0)


def quoting_records(n: int):
    """Short Korean records (~360 SmolLM2 tokens of prompt): SmolLM2's feedback on them quotes
    the prompt's instruction and response, which is all drafts need to be accepted. The built-in
    bench records (~1,000 tokens each) cost three times the prompt work for nothing more, but
    in the argmax test (see there)."""
    return [record_from_mapping(short_record(i), line=i) for i in range(1, n + 1)]


def _margin(logits: np.ndarray) -> float:
    top2 = np.partition(logits.astype(np.float64), -2)[-2:]
    return float(top2[1] - top2[0])


def greedy_runs(model, config: EngineConfig, records, max_tokens: int = 48):
    """The judge's greedy requests for `records`, all submitted at once (so they share batches);
    returns (grades, outputs, per output the margin between the best two logits of every token
    drawn, engine stats, prompt tokens, the engine's drafts per step). tests/test_gpu.py uses it."""
    with Judge(model, engine=config, sampling=SamplingParams(max_tokens=max_tokens)) as judge:
        margins: list[list[float]] = [[] for _ in records]
        prompts = [judge.tokenize_prompt(record) for record in records]
        handles = [judge.engine.submit(replace(
            judge.grading_request(prompt),
            on_sample=lambda token, logits, seen=seen: seen.append(_margin(logits))))
            for prompt, seen in zip(prompts, margins)]
        outs = [handle.results()[0] for handle in handles]
        grades = [judge.to_grade(record, out) for record, out in zip(records, outs)]
        return grades, outs, margins, judge.engine.stats, prompts, judge.engine.draft


def same_but_near_ties(on_outs, off_outs, off_margins, near_tie: float) -> int:
    """Outputs with drafts the same as without, but where greedy flipped between two logits closer
    than `near_tie` (the first difference of each output); returns how many are wholly the same."""
    same = 0
    for a, b, margins in zip(on_outs, off_outs, off_margins):
        common = min(len(a.tokens), len(b.tokens))
        first = next((i for i in range(common) if a.tokens[i] != b.tokens[i]),
                     None if len(a.tokens) == len(b.tokens) else common)
        if first is None:
            same += 1
        else:
            assert margins[first] < near_tie, (first, margins[first], a.text, b.text)
    return same


# llama.cpp's CPU backend computes a lone token with another matmul kernel than a row of several
# (docs/exactness.md, "The same bits from the cache as cold"); without drafts each generated token is a lone row, with
# drafts it shares a row with its drafts. Measured on the built-in bench records and these: logits differ by up to ~1 (the
# largest over the vocabulary; 0.5 typical), so greedy can only flip where the best two logits were
# closer than that. 0.1 is tighter than anything seen to flip and far below a typical margin (>1).
NEAR_TIE = 0.1
# The same rounding moves the verdict's probabilities of an unchanged text: up to 0.033 seen on the
# tests' Q8_0 SmolLM2 (0.02 on the shipped Q4_1: llama.cpp computes Q8_0 rows of several tokens
# with llamafile's sgemm, a lone row with ggml's own dot product). A verdict read from a wrong
# row would differ by far more.
PROBABILITY_DRIFT = 0.05


@slow
@pytest.mark.parametrize("parallel", [1, 2])
def test_drafts_leave_greedy_output_unchanged(parallel):
    records = quoting_records(3)
    off, off_outs, off_margins, off_stats, _, _ = greedy_runs(smollm2_gguf(), _config(parallel, 0), records)
    on, on_outs, _, on_stats, _, _ = greedy_runs(smollm2_gguf(), _config(parallel, 8), records)
    assert off_stats.drafted_tokens == 0 and on_stats.accepted_tokens > 0   # drafts were really used
    assert on_stats.steps < off_stats.steps                                  # and saved decode steps
    # The only difference allowed: a flip between two near-equal logits (one record of three, seen).
    same = same_but_near_ties(on_outs, off_outs, off_margins, NEAR_TIE)
    assert same >= 2, "drafts changed the greedy text of more than one record in three"
    for a, b in zip(on, off):
        if a.output == b.output:   # same text: same verdict, read from the same row's logits
            assert (a.score, a.forced, a.completion_tokens) == (b.score, b.forced, b.completion_tokens)
            assert a.probabilities == pytest.approx(b.probabilities, abs=PROBABILITY_DRIFT)
    assert sum(g.extra["accepted_tokens"] for g in on) == on_stats.accepted_tokens
    assert all("drafted_tokens" not in g.extra for g in off)   # rows without drafts as before


@slow
def test_drafted_output_is_the_models_own_argmax():
    """Every token generated with drafts is the argmax of the logits llama.cpp computes for the
    prompt and that output in one batch: a drafted step computes its rows in a batch of several
    tokens, the kernel of the reference (measured: the same logits to the bit on these records).
    The built-in bench records, not quoting_records: on those, steps where the lookup finds no
    draft decode a lone token, whose logits round differently from the one-batch reference.
    One record (~1,000 tokens of prompt): a second cost as much again and showed nothing more."""
    records = bench_records(1)
    _, outs, _, stats, prompts, _ = greedy_runs(smollm2_gguf(), _config(1, 8), records)
    assert stats.accepted_tokens > 0
    for out, (llm, row) in zip(outs, _one_batch_logits(zip(prompts, (o.tokens for o in outs)))):
        logits = np.asarray(llm.scores[row:row + len(out.tokens)])
        assert out.tokens == np.argmax(logits, axis=1).tolist()


CHAT = ("<|im_start|>user\nRepeat this list twice: apples, pears, plums, cherries, grapes, lemons."
        "<|im_end|>\n<|im_start|>assistant\n")


def _one_batch_logits(prompts_and_outputs):
    """llama.cpp's logits for each prompt + output, computed in one batch: yields (handle of a
    context holding them, batch row of the prompt's last token) for each."""
    from llama_cpp import Llama

    llm = Llama(str(smollm2_gguf()), n_ctx=2560, n_batch=2560, n_ubatch=2560, n_threads=1,
                logits_all=True, verbose=False)
    try:
        for prompt, output in prompts_and_outputs:
            llm.reset()
            llm.eval(list(prompt) + list(output))
            yield llm, len(prompt) - 1
    finally:
        llm.close()


def _draw(chain: SamplerChain, logits: np.ndarray) -> int:
    """What llama_sampler_sample does with a context's logits row, from a copy of that row."""
    import ctypes

    import llama_cpp as ll

    data = (ll.llama_token_data * len(logits))()
    for i, logit in enumerate(logits.tolist()):
        data[i].id, data[i].logit, data[i].p = i, logit, 0.0
    cur = ll.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    ll.llama_sampler_apply(chain._chain, ctypes.byref(cur))
    token = data[cur.selected].id
    ll.llama_sampler_accept(chain._chain, token)
    return token


@slow
def test_seeded_sampling_with_drafts_is_one_draw_per_token():
    """Seeded sampling (penalty, top-p, temperature) with drafts, three sequences decoded together:
    a fresh sampler chain with the same seed, fed the logits each emitted token was drawn from,
    draws exactly the emitted tokens. So every emitted token took one draw from its own position's
    logits (a rejected draft costs no draw and never enters the penalty's history), the stream of
    draws decoding without drafts takes: each token is distributed as the model's p
    (drafts.accept_drafts). The logits themselves are the model's (the argmax test above); drafts
    off draws from a lone token's logits, which the CPU rounds differently (see NEAR_TIE)."""
    config = EngineConfig(n_ctx=512, n_parallel=3, gpu_layers=0, n_threads=1, draft=6, host_cache_mib=0)
    with Engine(smollm2_gguf(), config) as engine:
        prompt = engine.model.tokenize(CHAT)
        seen: list[list[tuple[int, np.ndarray]]] = [[], [], []]
        params = [SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, seed=3 + i, max_tokens=40)
                  for i in range(3)]
        handles = [engine.submit(GenRequest(tokens=prompt, params=p, on_sample=lambda t, logits, s=s: s.append(
            (t, logits.copy())))) for p, s in zip(params, seen)]
        outs = [handle.results()[0] for handle in handles]
        accepted, n_vocab = engine.stats.accepted_tokens, engine.model.n_vocab
    assert accepted > 0
    assert len({tuple(o.tokens) for o in outs}) > 1   # really sampled
    for p, out, drawn in zip(params, outs, seen):
        assert [t for t, _ in drawn][:len(out.tokens)] == out.tokens
        chain = SamplerChain(p, n_vocab, history=prompt)
        try:
            assert [_draw(chain, logits) for _, logits in drawn] == [t for t, _ in drawn]
        finally:
            chain.close()


@slow
def test_forced_verdicts_and_samples_through_the_judge_with_drafts():
    """The judge's --samples path and its forced-score continuation with drafts on: every sample is
    scored (forced where the model wrote no verdict within max_tokens)."""
    sampling = replace(SamplingParams(temperature=1.0, top_p=0.9, seed=1, max_tokens=24), n=2)
    config = EngineConfig(n_ctx=2560, gpu_layers=0, n_threads=1, n_parallel=2, draft=6, host_cache_mib=0)
    with Judge(smollm2_gguf(), engine=config, sampling=sampling) as judge:
        grades = list(judge.grade_stream(quoting_records(2)))
    assert len(grades) == 2
    for grade in grades:
        assert grade.error is None and grade.score is not None and len(grade.extra["scores"]) == 2


def test_rows_sum_both_orders_drafts():
    """A pair graded in both orders (--both-orders) reports both requests' drafts, like its tokens."""
    from prom_local.judging.grades import RelativeGrade
    from prom_local.judging.records import record_from_mapping
    from prom_local.judging.pairwise import both_orders_grade

    def graded(winner, drafted):
        grade = RelativeGrade(id="p1", score=None, feedback="f", output="o", winner=winner,
                              probabilities=(0.6, 0.4), completion_tokens=10)
        grade.extra.update(drafted_tokens=drafted, accepted_tokens=drafted // 2)
        return grade

    record = record_from_mapping({"id": "p1", "instruction": "q", "response_A": "a", "response_B": "b",
                                  "rubric": "r"}, line=1)
    row = both_orders_grade(record, graded("A", 10), graded("B", 6)).to_row()
    assert row["drafted_tokens"] == 16 and row["accepted_tokens"] == 8
