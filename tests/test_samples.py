"""--samples N: N sampled judgments of one record from one prompt computation, and their row.

The engine half runs real inference on SmolLM2 (slow): N samples really come from one prompt
decode (the engine's token counters say so, not a clock), seeded runs repeat, greedy samples equal
each other and a single greedy run. The row half (mean, spread, rounding, forced count) is plain
arithmetic on Grades and runs in the fast lane.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest

from assets import smollm2_gguf
from helpers import in_order, invoke, read_jsonl, short_record, write_jsonl
from prom_local import Judge
from prom_local.engine import Engine, EngineConfig, GenRequest, SamplingParams
from prom_local.judging.grades import Grade
from prom_local.judging.verdict_text import find_score
from prom_local.judging.records import record_from_mapping
from prom_local.judging.samples import PROTOCOLS, apply_protocol, combine, round_half_up, row_score

slow = pytest.mark.slow

PAPER = SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, seed=7, max_tokens=20)
CHAT = "<|im_start|>user\nDescribe the sea in one sentence.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine():
    # One thread: these tests share two cores with others (see test_parallel.py).
    with Engine(smollm2_gguf(), EngineConfig(n_ctx=1024, n_parallel=3, gpu_layers=0, n_threads=1)) as eng:
        yield eng


def run(engine, params: SamplingParams):
    """Outputs of one request for params.n samples, and what it cost the engine in tokens."""
    tokens = engine.model.tokenize(CHAT)
    before = (engine.stats.prompt_tokens, engine.stats.reused_tokens, engine.stats.batch_tokens,
              engine.stats.forked_tokens)
    outs = engine.submit(GenRequest(tokens=tokens, params=params)).results()
    after = (engine.stats.prompt_tokens, engine.stats.reused_tokens, engine.stats.batch_tokens,
             engine.stats.forked_tokens)
    prompt, reused, batch, forked = (a - b for a, b in zip(after, before))
    return outs, tokens, {"prompt": prompt, "reused": reused, "batch": batch, "forked": forked}


@slow
def test_three_samples_compute_the_prompt_once(engine):
    for seq in range(engine.n_parallel):   # a cold start: nothing of the prompt cached anywhere
        engine.cache.reuse(seq, seq, 0)
    outs, tokens, cost = run(engine, replace(PAPER, n=3))
    assert [o.index for o in outs] == [0, 1, 2]
    assert cost["prompt"] == 3 * len(tokens)                 # three prompts served...
    assert cost["prompt"] - cost["reused"] == len(tokens)    # ...one computed
    assert cost["forked"] == 2 * len(tokens)
    assert [o.reused_prompt_tokens for o in outs] == [0, len(tokens), len(tokens)]
    # Every token decoded: the prompt once, then each sample's tokens (the last sampled token of
    # a sample cut by max_tokens is never fed back).
    fed = sum(len(o.tokens) - (o.finish_reason == "length") for o in outs)
    assert cost["batch"] == len(tokens) + fed
    # Sampled at temperature 1.0 with seeds 7, 8, 9: not all alike, each a real continuation.
    assert len({o.text for o in outs}) > 1
    assert all(o.tokens and o.finish_reason in ("stop", "length") for o in outs)


@slow
def test_seeded_samples_repeat_exactly(engine):
    params = replace(PAPER, n=3)
    first = [o.tokens for o in run(engine, params)[0]]
    second = [o.tokens for o in run(engine, params)[0]]
    assert first == second
    # Sample i draws with seed + i: sample 1 of seed 7 is sample 0 of seed 8.
    shifted = run(engine, replace(PAPER, seed=8))[0]
    assert shifted[0].tokens == first[1]


@slow
def test_greedy_samples_equal_each_other_and_a_single_run(engine):
    greedy = SamplingParams(max_tokens=16)
    (single,), _, _ = run(engine, greedy)
    outs, _, _ = run(engine, SamplingParams(max_tokens=16, n=3))
    assert [o.tokens for o in outs] == [single.tokens] * 3
    assert [o.text for o in outs] == [single.text] * 3


@slow
def test_cancel_ends_every_sample_and_too_many_samples_are_refused(engine):
    tokens = engine.model.tokenize(CHAT)
    handle = engine.submit(GenRequest(tokens=tokens, params=replace(PAPER, n=3, max_tokens=400)))
    for event in handle.events():
        if getattr(event, "text", ""):   # the first token delta: the samples are generating
            handle.cancel()
            break
    # The rest of the stream: one DoneEvent per sample (nothing hangs), cancelled unless that
    # sample happened to end in the very step the cancel came after.
    outs = handle.results()
    assert [o.index for o in outs] == [0, 1, 2]
    assert all(o.finish_reason in ("cancelled", "stop") for o in outs)
    assert any(o.finish_reason == "cancelled" for o in outs)
    with pytest.raises(ValueError, match="4 samples of one prompt need 4 parallel sequences"):
        engine.submit(GenRequest(tokens=tokens, params=replace(PAPER, n=4))).results()
    # The engine is free again: a fresh request runs to its end.
    assert len(engine.submit(GenRequest(tokens=tokens, params=replace(PAPER, n=3))).results()) == 3


@slow
def test_each_sample_gets_its_own_forced_score_and_the_row_combines_them():
    record = record_from_mapping(short_record(1), line=1)
    sampling = SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, seed=3, max_tokens=12, n=3)
    with Judge(smollm2_gguf(), engine=EngineConfig(n_ctx=1024, gpu_layers=0, n_threads=1),
               sampling=sampling) as judge:
        assert judge.engine.n_parallel == 3          # raised to one sequence per sample
        outs = judge.engine.submit(judge.record_request(record)).results()
        row = judge.samples_grade(record, outs).to_row()
        again = next(iter(judge.grade_stream([record]))).to_row()
    singles = [judge.to_grade(record, o) for o in outs]
    # Samples without a verdict of their own (12 tokens rarely hold one) are each forced.
    for out, grade in zip(outs, singles):
        assert grade.forced == (find_score(out.text) is None)
        assert grade.score in (1, 2, 3, 4, 5)
    scores = [g.score for g in singles]
    assert row["samples"] == 3 and row["scores"] == scores
    assert row["mean_score"] == pytest.approx(statistics.fmean(scores), abs=1e-4)
    assert row["score_spread"] == pytest.approx(statistics.pstdev(scores), abs=1e-4)
    assert row["score"] == round_half_up(statistics.fmean(scores))
    assert row["forced_samples"] == sum(g.forced for g in singles)
    assert row["output"] == outs[0].text and row["feedback"] == singles[0].feedback
    assert row["completion_tokens"] == sum(len(o.tokens) for o in outs)
    # grade_stream gives the same row for the same seeds (what score, the TUI and Ray call).
    for key in ("score", "scores", "mean_score", "score_spread", "output", "forced_samples"):
        assert again[key] == row[key], key


@slow
def test_cli_protocol_paper_writes_sample_rows(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1), short_record(2)])
    out = tmp_path / "out.jsonl"
    proc = invoke("score", src, "-o", out, "-m", smollm2_gguf(), "--protocol", "paper", "--max-tokens", "12",
                  "--gpu-layers", "0", "--threads", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    rows = in_order(read_jsonl(out), ["r1", "r2"])
    for r in rows:
        assert r["samples"] == 3 and len(r["scores"]) == 3 and r["error"] is None
        assert r["score"] == round_half_up(r["mean_score"])


# ----------------------------------------------------------------------------------------------
# The row of several samples: plain arithmetic (fast lane).

def grade(score, *, forced=False, error=None, output="", probs=None, tokens=5) -> Grade:
    return Grade(id="x", score=score, feedback=output, output=output, forced=forced, error=error,
                 probabilities=probs, completion_tokens=tokens, seconds=1.0)


def test_combine_means_spreads_and_rounds_half_up():
    row = combine([grade(4, output="first"), grade(3), grade(4, forced=True)]).to_row()
    assert row["scores"] == [4, 3, 4] and row["samples"] == 3
    assert row["mean_score"] == pytest.approx(11 / 3, abs=1e-4)
    assert row["score_spread"] == pytest.approx(statistics.pstdev([4, 3, 4]), abs=1e-4)
    assert row["score"] == 4 and row["forced_samples"] == 1
    assert row["output"] == "first" and row["completion_tokens"] == 15
    assert combine([grade(2), grade(3)]).score == 3           # 2.5 rounds up, not to even
    assert combine([grade(1), grade(2), grade(2), grade(3)]).score == 2
    assert [round_half_up(x) for x in (1.5, 2.5, 3.49, 4.5)] == [2, 3, 3, 5]


def test_combine_skips_missing_scores_and_a_cancelled_sample_makes_an_error_row():
    row = combine([grade(None), grade(5), grade(3)]).to_row()
    assert row["scores"] == [None, 5, 3] and row["mean_score"] == 4.0 and row["score"] == 4
    assert row["score_spread"] == 1.0 and row["error"] is None
    none = combine([grade(None), grade(None)]).to_row()
    assert none["score"] is None and none["mean_score"] is None and none["score_spread"] is None
    cut = combine([grade(4), grade(None, error="cancelled")])
    assert cut.error == "cancelled"


def test_combine_averages_the_score_probabilities():
    a, b = (1.0, 0, 0, 0, 0), (0, 0, 0, 0, 1.0)
    row = combine([grade(1, probs=a), grade(5, probs=b)]).to_row()
    assert row["probabilities"] == {"1": 0.5, "2": 0, "3": 0, "4": 0, "5": 0.5}
    assert row["expected_score"] == 3.0


def test_rows_read_back_and_row_score_prefers_the_mean():
    row = json.loads(json.dumps(combine([grade(4), grade(3)]).to_row()))
    assert Grade.from_row(row).extra["scores"] == [4, 3]
    assert row_score(row) == 3.5 and row_score({"score": 4}) == 4.0 and row_score({"score": None}) is None


def test_the_paper_protocol_and_what_overrides_it():
    assert PROTOCOLS["paper"] == {"temperature": 1.0, "top_p": 0.9, "repeat_penalty": 1.03, "n": 3}
    base = SamplingParams(temperature=0.2, max_tokens=64)
    assert apply_protocol(base, "paper") == SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03,
                                                           n=3, max_tokens=64)
    assert apply_protocol(base, "paper", keep={"temperature"}).temperature == 0.2
    assert apply_protocol(base, None) is base
    with pytest.raises(ValueError, match="unknown protocol"):
        apply_protocol(base, "vibes")


def test_sample_i_is_seeded_seed_plus_i():
    params = SamplingParams(seed=10, n=3)
    assert [params.for_sample(i).seed for i in range(3)] == [10, 11, 12]
    assert params.for_sample(0) is params
