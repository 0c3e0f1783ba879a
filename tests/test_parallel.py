"""Many records in flight in one llama.cpp context (--parallel N), on a real model (SmolLM2-135M, CPU).

What must hold: one row per record in input order with ids intact; shared prefixes really reused
(and the reused result equal to a cold computation); the same command twice gives the same bytes;
cancellation, over-long records, prompts longer than n_batch and sequences finishing in the same
step inside a parallel batch; no KV cache overflow however long sequences grow.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from assets import smollm2_gguf
from helpers import RUBRIC, in_order, invoke, short_record, write_jsonl
from prom_local import EngineConfig, Judge, PromptProfile, SamplingParams
from prom_local.engine.offload import ModelShape, choose_parallel
from prom_local.judging.records import record_from_mapping

slow = pytest.mark.slow  # real inference on SmolLM2; the arithmetic tests at the end are not

QUESTIONS = [
    "서울은 대한민국의 수도이다. 서울의 인구는 약 천만 명이다. 서울에서 가장 큰 강의 이름은 무엇인가?",
    "부산은 대한민국 제2의 도시이다. 부산에는 큰 항구가 있다. 부산의 유명한 해수욕장을 하나 말하라.",
]
ANSWERS = ["한강입니다.", "모르겠습니다.", "해운대입니다.", "낙동강입니다."]
# Volatile fields: wall-clock timings differ between runs by nature.
TIMING = {"seconds", "first_token_seconds"}


def rows_for(n: int, *, per_question: int = 2) -> list[dict]:
    """Round-robin over questions, as when several models' answers to one set are graded."""
    return [{"id": f"q{q + 1}-a{k + 1}", "instruction": QUESTIONS[q], "response": ANSWERS[k % len(ANSWERS)],
             "rubric": RUBRIC}
            for k in range(per_question) for q in range(len(QUESTIONS))][:n]


def records(rows: list[dict]):
    return [record_from_mapping(row, line=i + 1) for i, row in enumerate(rows)]


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


@pytest.fixture(scope="module")
def model() -> Path:
    return smollm2_gguf()


# The shipped profile's 150-token system prompt makes every test prompt long; the engine does not
# care what the text says, so most tests use this shorter one (the CLI test uses the real one).
SHORT = PromptProfile(name="short-test",
                      system="Grade the answer. Write feedback, then [RESULT] and a score from 1 to 5.",
                      user_with_reference="{instruction}\n{response}\n{reference_answer}\n{criteria}",
                      user_without_reference="Question: {instruction}\nAnswer: {response}\nCriteria: {criteria}")


def judge(model: Path, parallel: int, *, max_tokens: int = 10, n_ctx: int = 1024, n_batch: int = 512,
          profile=SHORT, mix_prompts: bool | None = None, host_cache_mib: int = 1024,
          flash_attn: bool | None = None) -> Judge:
    # One thread: these tests share the machine with others, and llama.cpp's spinning thread pool
    # slows down badly when its threads do not each get a core.
    return Judge(model, profile=profile,
                 engine=EngineConfig(n_ctx=n_ctx, gpu_layers=0, n_threads=1, n_parallel=parallel,
                                     n_batch=n_batch, mix_prompts=mix_prompts, host_cache_mib=host_cache_mib,
                                     flash_attn=flash_attn),
                 sampling=SamplingParams(max_tokens=max_tokens))


# ----------------------------------------------------------------------------------------------
# The CLI: order, ids, determinism, the printed default.

@slow
def test_cli_parallel_rows_in_input_order_and_identical_twice(model, tmp_path):
    rows = rows_for(3) + ['{"id": "broken", "instruction": ']  # an input error keeps its place too
    rows.insert(2, {"id": "too-long", "instruction": "가나다라 " * 400, "response": "네.", "rubric": RUBRIC})
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / f"out-{run}.jsonl"
        proc = invoke("score", str(src), "-o", str(out), "-m", str(model), "--parallel", "3",
                      "--ctx", "768", "--max-tokens", "4", "--gpu-layers", "0", "--threads", "1",
                      "--quiet")
        assert proc.returncode == 2, proc.stderr  # 2: some rows are error rows (too long, broken)
        # Rows are written as records finish; put them in input order to compare.
        outputs.append(in_order([json.loads(line) for line in out.read_text("utf-8").splitlines()],
                                ["q1-a1", "q2-a1", "too-long", "q1-a2", "5"]))
    first, second = outputs
    assert "context size 768" in first[2]["error"] and first[2]["finish_reason"] == "error"
    assert "invalid JSON" in first[4]["error"]
    assert all(first[i]["error"] is None and first[i]["score"] in (1, 2, 3, 4, 5) for i in (0, 1, 3))
    # Same command, same machine: the same rows, byte for byte apart from timings.
    assert [stable(r) for r in first] == [stable(r) for r in second]
    # The second answer to question 1 reused the question's whole prefix, not just the system prompt.
    assert first[3]["reused_prompt_tokens"] > first[1]["reused_prompt_tokens"] > 0


@slow
def test_cli_default_parallel_is_chosen_and_printed(model, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", rows_for(1))
    proc = invoke("score", str(src), "-o", str(tmp_path / "out.jsonl"), "-m", str(model),
                  "--ctx", "512", "--max-tokens", "2", "--gpu-layers", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "--parallel " in proc.stderr and "(auto, CPU" in proc.stderr


# ----------------------------------------------------------------------------------------------
# Prefix reuse: it happens, and equals computing the record cold.

@slow
def test_shared_prefix_is_computed_once_and_equals_cold(model):
    recs = records(rows_for(4))  # q1-a1, q2-a1, q1-a2, q2-a2: all start together at --parallel 4
    with judge(model, 4) as par:
        grades = list(par.grade_stream(recs))
        stats = par.engine.stats
        system_and_question = [len(_common(par.tokenize_prompt(recs[0]), par.tokenize_prompt(recs[2]))),
                               len(_common(par.tokenize_prompt(recs[1]), par.tokenize_prompt(recs[3])))]
        system_only = len(_common(par.tokenize_prompt(recs[0]), par.tokenize_prompt(recs[1])))
    assert [g.id for g in grades] == ["q1-a1", "q2-a1", "q1-a2", "q2-a2"]
    reused = [g.extra["reused_prompt_tokens"] for g in grades]
    # The second question waited for the system prompt; each second answer for its question.
    assert reused == [0, system_only, system_and_question[0], system_and_question[1]]
    assert stats.waits >= 3
    assert stats.reused_tokens == sum(reused)
    # Each reused result is the one a fresh --parallel 1 engine computes from scratch.
    for rec, grade in zip(recs[1:], grades[1:]):
        with judge(model, 1) as cold:
            alone = cold.grade(rec)
        assert alone.extra["reused_prompt_tokens"] == 0
        assert grade.output == alone.output
        assert grade.completion_tokens == alone.completion_tokens
        assert grade.score == alone.score and grade.probabilities == alone.probabilities


@slow
@pytest.mark.parametrize("flash_attn", [False, True], ids=["flash-attn-off", "flash-attn-on"])
def test_a_prefix_reused_up_to_near_the_end_equals_cold(model, flash_attn):
    """Two records that differ only in their last few prompt tokens: the second reuses the first's
    prompt, and must give the cold result bit for bit. With flash attention on, llama.cpp's CPU kernel
    computes a piece of fewer than 64 rows differently (logits moved by ~0.5), so reuse stops 64
    tokens before the end and those tokens decode together, as in the cold run."""
    rubric = {**RUBRIC, "criteria": "맞는가?"}
    recs = records([{"id": "a", "instruction": QUESTIONS[0], "response": "한강입니다.", "rubric": rubric},
                    {"id": "b", "instruction": QUESTIONS[0], "response": "한강입니다!", "rubric": rubric}])
    with judge(model, 1, flash_attn=flash_attn) as warm:
        assert warm.engine.flash_attn is flash_attn
        tail = warm.engine.exact_tail
        common = len(_common(warm.tokenize_prompt(recs[0]), warm.tokenize_prompt(recs[1])))
        warm.grade(recs[0])
        second = warm.grade(recs[1])
    assert tail == (64 if flash_attn else 8)
    assert 0 < second.prompt_tokens - common < 64   # they differ within one kernel tile of the end
    assert second.extra["reused_prompt_tokens"] == min(common, second.prompt_tokens - tail) > 0
    with judge(model, 1, flash_attn=flash_attn) as cold:
        alone = cold.grade(recs[1])
    assert alone.extra["reused_prompt_tokens"] == 0
    assert (second.output, second.score, second.probabilities) == (alone.output, alone.score, alone.probabilities)


@slow
def test_flash_attention_gives_the_same_rows_at_any_parallel(model):
    """With flash attention on, a token generated alone (its neighbours' sequences prefilling or
    done) and one generated beside others take different CPU kernels unless the engine pads it
    (core.Engine._lone_rows); prompts past 256 tokens reach the kernel that differs."""
    recs = records([{**short_record(i), "id": f"r{i}"} for i in range(3)])
    rows = {}
    for parallel in (1, 3):
        with Judge(model, engine=EngineConfig(n_ctx=1024, gpu_layers=0, n_threads=2, n_parallel=parallel,
                                              flash_attn=True),
                   sampling=SamplingParams(max_tokens=12)) as j:
            grades = list(j.grade_stream(recs))
        assert min(g.prompt_tokens for g in grades) > 256
        rows[parallel] = [(g.output, g.score, g.probabilities) for g in grades]
    assert rows[1] == rows[3]


def _common(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return a[:n]


@slow
def test_parallel_n_matches_parallel_1(model):
    recs = records(rows_for(5, per_question=3))
    # Without the host store, so that one sequence reuses only what it holds (the comparison of
    # reuse below); tests/test_host_cache.py shows the store gives the same outputs.
    with judge(model, 1, host_cache_mib=0) as one:
        sequential = list(one.grade_stream(recs))
    with judge(model, 3) as three:
        parallel = list(three.grade_stream(recs))
    assert [g.id for g in parallel] == [g.id for g in sequential]
    # Per-sequence KV streams, and no flash attention on CPU, make each sequence's arithmetic
    # independent of what it is batched with: outputs agree token for token and bit for bit.
    assert [g.output for g in parallel] == [g.output for g in sequential]
    assert [g.probabilities for g in parallel] == [g.probabilities for g in sequential]
    assert sum(g.extra["reused_prompt_tokens"] for g in parallel) > \
        sum(g.extra["reused_prompt_tokens"] for g in sequential)


@slow
def test_prompt_chunks_mixed_with_generated_tokens(model):
    """The GPU default: prompt chunks share batches with generated tokens. llama.cpp then cuts
    prompts differently from --parallel 1, so only validity is checked, not equality."""
    recs = records(rows_for(4))
    with judge(model, 3, mix_prompts=True) as par:
        assert par.engine.mix_prompts
        grades = list(par.grade_stream(recs))
    assert [g.id for g in grades] == [r.id for r in recs]
    assert all(g.error is None and g.score in (1, 2, 3, 4, 5) and g.completion_tokens > 0 for g in grades)
    assert grades[2].extra["reused_prompt_tokens"] > grades[1].extra["reused_prompt_tokens"] > 0


# ----------------------------------------------------------------------------------------------
# Edge cases inside a parallel batch.

@slow
def test_cancel_inside_a_parallel_batch_then_reuse_the_engine(model):
    recs = records(rows_for(4))
    with judge(model, 3, max_tokens=12) as par:
        reference = [g.output for g in par.grade_stream(recs)]
        cancel = threading.Event()
        seen: list[str] = []

        def on_token(record, text):
            seen.append(record.id)
            if len(seen) == 5:  # some sequences generating, others mid-prompt or still queued
                cancel.set()

        grades = list(par.grade_stream(recs, cancel=cancel, on_token=on_token))
        assert [g.id for g in grades] == [r.id for r in recs]
        cancelled = [g for g in grades if g.error == "cancelled"]
        assert cancelled and all(g.finish_reason == "cancelled" and g.score is None for g in cancelled)
        # The KV cache kept only what was really decoded: the same records again give the same.
        again = [g.output for g in par.grade_stream(recs)]
    assert again == reference


@slow
def test_over_long_record_inside_a_parallel_batch(model):
    rows = rows_for(4)
    rows.insert(1, {"id": "long", "instruction": "가나다라 " * 300, "response": "네.", "rubric": RUBRIC})
    with judge(model, 3, n_ctx=640) as par:
        grades = list(par.grade_stream(records(rows)))
    assert [g.id for g in grades] == [r["id"] for r in rows]
    assert grades[1].error and "context size 640" in grades[1].error and grades[1].prompt_tokens > 640
    assert all(g.error is None and g.score is not None for i, g in enumerate(grades) if i != 1)


@slow
def test_prompts_longer_than_n_batch(model):
    recs = records(rows_for(4))
    with judge(model, 1, n_batch=32) as one:
        sequential = list(one.grade_stream(recs))
        n_prompt = len(one.tokenize_prompt(recs[0]))
    assert n_prompt > 4 * 32
    with judge(model, 3, n_batch=32) as par:
        parallel = list(par.grade_stream(recs))
    assert [g.id for g in parallel] == [r.id for r in recs]
    assert all(g.error is None and g.completion_tokens > 0 for g in parallel)
    assert [g.output for g in parallel] == [g.output for g in sequential]


@slow
def test_identical_records_finish_in_the_same_step(model):
    row = rows_for(1)[0]
    recs = records([{**row, "id": f"dup{i}"} for i in range(3)])
    with judge(model, 3, max_tokens=6) as par:
        grades = list(par.grade_stream(recs))
        steps = par.engine.stats.steps
    assert [g.id for g in grades] == ["dup0", "dup1", "dup2"]
    assert len({(g.output, g.score, g.probabilities) for g in grades}) == 1
    # The whole prompt but its last tokens (EXACT_TAIL; 64 with flash attention on) is reused: they
    # are decoded as one chunk, as in the cold run, so the result is the same bits (fewer rows would
    # take another kernel).
    assert grades[1].extra["reused_prompt_tokens"] == grades[1].prompt_tokens - par.engine.exact_tail
    assert steps < 3 * (6 + 2)  # decoded together, not one after another


# A profile that makes the 135M model write a long answer: every sequence runs into its budget.
CHATTY = PromptProfile(name="chatty-test", system="You write very long stories.",
                       user_with_reference="{instruction} {response}",
                       user_without_reference="Write a long story about {instruction} {response}",
                       score_continuation="\n[RESULT] ")


@slow
def test_kv_cache_never_overflows_at_full_length(model):
    rows = [{"id": f"s{i}", "instruction": f"dragon number {i}", "response": "and its castle.",
             "rubric": RUBRIC} for i in range(4)]
    n_ctx = 128
    with judge(model, 3, max_tokens=1000, n_ctx=n_ctx, profile=CHATTY) as par:
        grades = list(par.grade_stream(records(rows)))
    assert [g.id for g in grades] == [r["id"] for r in rows]
    for g in grades:
        assert g.error is None and g.finish_reason == "length" and g.forced
        # the prompt, the generated text and the forced "[RESULT]" continuation all fit n_ctx
        assert g.prompt_tokens + g.completion_tokens <= n_ctx - 16


# ----------------------------------------------------------------------------------------------
# The default --parallel: arithmetic over memory, no model needed.

LLAMA3_8B_Q4 = ModelShape(file_bytes=4_920_000_000, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
                          n_ff=14336, n_vocab=128256)


def test_choose_parallel_from_memory():
    gib = 1024**3
    # 8B at 8192 tokens: 1 GiB of KV cache per sequence.
    assert LLAMA3_8B_Q4.n_layer * LLAMA3_8B_Q4.kv_bytes_per_layer(8192) == gib
    assert choose_parallel(LLAMA3_8B_Q4, n_ctx=8192, gpu=True, free_bytes=80 * gib)[0] == 16
    n, why = choose_parallel(LLAMA3_8B_Q4, n_ctx=8192, gpu=True, free_bytes=12 * gib)
    assert n == 6 and "GPU" in why and "6 x 8192" in why
    assert choose_parallel(LLAMA3_8B_Q4, n_ctx=8192, gpu=True, free_bytes=5 * gib)[0] == 1
    # CPU: at most 4, and at most half the RAM left beside the weights.
    assert choose_parallel(LLAMA3_8B_Q4, n_ctx=8192, gpu=False, free_bytes=22 * gib)[0] == 4
    assert choose_parallel(LLAMA3_8B_Q4, n_ctx=8192, gpu=False, free_bytes=9 * gib)[0] == 2
    assert choose_parallel(LLAMA3_8B_Q4, n_ctx=2048, gpu=False, free_bytes=None)[0] == 4


def test_ray_scorer_accepts_parallel_auto():
    """`score --ray` without --parallel: each engine chooses; the driver must not need the number
    before the engines have loaded."""
    from prom_local.backends.ray.driver import JudgeSpec, RayScorer

    scorer = RayScorer(JudgeSpec(engine=EngineConfig(n_parallel=None)))
    assert scorer.n_parallel is None and scorer.chunk_size == 8
    assert RayScorer(JudgeSpec(engine=EngineConfig(n_parallel=6))).chunk_size == 12
