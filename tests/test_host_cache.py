"""The host prompt store: earlier prompts' KV saved when a sequence is about to lose it, loaded back
when a new prompt shares more with it than with any sequence.

The rules on made-up tokens (a Memory that records calls and saves token lists), then llama.cpp's
own state save/load on SmolLM2: a state loaded into another sequence continues exactly as the
original, and a --parallel 1 run over instructions in turn gives the same grades as without the
store while computing less.
"""

from __future__ import annotations

import numpy as np
import pytest

from assets import smollm2_gguf
from prom_local import EngineConfig, Judge, SamplingParams
from prom_local.engine import Engine
from prom_local.engine.cache import MIN_RECALL_GAIN, MIN_SPILL, PrefixCache
from prom_local.engine.context import LlamaBatch
from prom_local.engine.host_cache import HostPromptCache
from prom_local.engine.scheduler import Scheduler
from test_parallel import SHORT, records, rows_for
from test_scheduler import Memory, job, prompt, run_alone


class SavingMemory(Memory):
    """A Memory whose saved state is the token list the table says the sequence holds."""

    def __init__(self):
        super().__init__()
        self.cache: PrefixCache | None = None
        self.fail_loads = False

    def seq_save(self, seq):
        self.calls.append(("save", seq))
        return np.array(self.cache.tokens(seq), dtype=np.int64).view(np.uint8)

    def seq_load(self, seq, data):
        self.calls.append(("load", seq))
        return not self.fail_loads


def make(n_parallel=1, limit=1 << 30):
    memory = SavingMemory()
    cache = PrefixCache(n_parallel, 4096, memory=memory, store=HostPromptCache(limit))
    memory.cache = cache
    sched = Scheduler(cache, n_ctx=4096, lookahead=1 if n_parallel == 1 else 4 * n_parallel, n_batch=512)
    return sched, memory


def test_a_prompt_replaced_in_the_only_sequence_comes_back_from_the_store():
    sched, memory = make()
    a1, b1, a2 = prompt(1, 1, n=200), prompt(2, 1, n=200), prompt(1, 2, n=200)
    run_alone(sched, job(a1), generated=range(7, 17))
    memory.calls.clear()
    second = run_alone(sched, job(b1))
    # b shares nothing with a: a's state (prompt and the 10 generated tokens) was saved first.
    assert ("save", 0) in memory.calls and second.reused == 0
    assert len(sched.cache.store) == 1
    memory.calls.clear()
    third = run_alone(sched, job(a2))
    # a2 shares a's 100-token opening: b (now in the sequence) is saved, a loaded back and trimmed.
    assert memory.calls[:2] == [("save", 0), ("load", 0)]
    assert ("rm", 0, 100) in memory.calls
    assert third.reused == 100 and sched.stats.recalled_tokens == 100
    assert list(sched.cache.tokens(0)) == a2


def test_no_load_when_the_sequence_already_holds_nearly_as_much():
    sched, memory = make()
    base = list(range(500))
    run_alone(sched, job(base + [9000 + i for i in range(50)]))
    run_alone(sched, job(base[:480] + [8000 + i for i in range(50)]))    # store: base + 9000s
    memory.calls.clear()
    # The sequence holds 480 of base; the store has 500: fewer than MIN_RECALL_GAIN more.
    assert 500 - 480 < MIN_RECALL_GAIN
    active = run_alone(sched, job(base + [7000 + i for i in range(50)]))
    assert ("load", 0) not in memory.calls and active.reused == 480


def test_small_losses_are_not_saved_and_nothing_is_saved_twice():
    sched, memory = make()
    p = prompt(1, 1, n=200)
    run_alone(sched, job(p))
    run_alone(sched, job(p[:-(MIN_SPILL - 1)] + [1] * 50))   # loses fewer than MIN_SPILL tokens
    assert not any(c[0] == "save" for c in memory.calls)
    run_alone(sched, job(prompt(2, 1)))
    run_alone(sched, job(prompt(3, 1)))
    run_alone(sched, job(prompt(2, 2)))                       # prompt(2, 1) loaded back ...
    saves = sum(c[0] == "save" for c in memory.calls)
    run_alone(sched, job(prompt(3, 2)))                       # ... and replaced: it is already stored
    assert sum(c[0] == "save" for c in memory.calls) == saves + 1   # prompt(2, 2) only


def test_a_failed_load_falls_back_to_computing_the_prompt():
    sched, memory = make()
    run_alone(sched, job(prompt(1, 1, n=200)))
    run_alone(sched, job(prompt(2, 1, n=200)))
    memory.fail_loads = True
    active = run_alone(sched, job(prompt(1, 2, n=200)))
    assert active.reused == 0 and sched.stats.recalled_tokens == 0
    assert list(sched.cache.tokens(0)) == prompt(1, 2, n=200)


def test_no_load_into_a_sequence_a_pending_copy_reads_from():
    """llama.cpp copies streams at the next decode: a state loaded into the source before then
    would be what the destination receives."""
    sched, memory = make(n_parallel=2)
    cache = sched.cache
    shared = prompt(1, 1, n=200)
    cache.append(0, shared)
    cache.reuse(1, 0, 150)                   # seq 1 takes a copy of seq 0 (pending until a decode)
    cache.store.put(np.array(prompt(2, 1, n=200)), np.zeros(8, np.uint8))
    assert cache.recall(0, np.array(prompt(2, 5, n=200)), 250) == 0
    assert ("load", 0) not in memory.calls
    cache.copies_done()
    assert cache.recall(0, np.array(prompt(2, 5, n=200)), 250) == 100


def test_the_store_keeps_within_its_limit_least_recently_used_first():
    store = HostPromptCache(limit_bytes=300)
    a, b, c = (np.arange(k * 1000, k * 1000 + 50) for k in (1, 2, 3))
    store.put(a, bytes(100))
    store.put(b, bytes(100))
    store.used(store.best(a, 50)[0])         # a is now the most recently used
    store.put(c, bytes(150))                 # evicts b, the least recently used
    assert store.best(a, 50)[1] == 50 and store.best(b, 50)[1] == 0 and store.best(c, 50)[1] == 50
    assert store.nbytes == 250 and store.evictions == 1
    # An entry that extends another replaces it; one larger than the limit is refused.
    store.put(np.concatenate([a, np.arange(7)]), bytes(120))
    assert len(store) == 2 and store.nbytes == 270
    assert not store.put(np.arange(9), bytes(301))


# ----------------------------------------------------------------------------------------------
# Real llama.cpp state save/load.

slow = pytest.mark.slow


def state_round_trip(model, gpu_layers: int, **engine) -> tuple[np.ndarray, np.ndarray]:
    """Decode a prompt in sequence 0, save its state, load it into sequence 1, then decode the same
    next token in both: the two logits rows (tests/test_gpu.py runs this with the KV on a GPU;
    test_kv_cache.py with quantized KV types, given as `engine` settings)."""
    config = EngineConfig(n_ctx=256, gpu_layers=gpu_layers, n_threads=1, n_parallel=2, **engine)
    with Engine(model, config) as engine:
        ctx = engine.ctx
        tokens = engine.model.tokenize("서울은 대한민국의 수도이다. 서울의 인구는 약 천만 명이다.", add_bos=True)
        batch = LlamaBatch(64)
        try:
            batch.add(tokens, 0, 0, True)
            ctx.decode(batch)
            state = ctx.seq_save(0)
            assert state is not None and state.size > 0
            assert ctx.seq_load(1, state)
            batch.clear()
            batch.add([tokens[-1]], len(tokens), 0, True)
            batch.add([tokens[-1]], len(tokens), 1, True)
            ctx.decode(batch)
            return ctx.logits(0).copy(), ctx.logits(1).copy()
        finally:
            batch.close()


@slow
def test_a_state_loaded_into_another_sequence_continues_exactly():
    original, loaded = state_round_trip(smollm2_gguf(), 0)
    assert np.array_equal(original, loaded)


@slow
def test_parallel_1_over_instructions_in_turn_same_grades_less_computed():
    recs = records(rows_for(4))   # q1, q2, q1, q2: each question replaces the other in the sequence

    def grades(host_cache_mib):
        engine = EngineConfig(n_ctx=512, gpu_layers=0, n_threads=1, n_parallel=1, host_cache_mib=host_cache_mib)
        with Judge(smollm2_gguf(), profile=SHORT, engine=engine, sampling=SamplingParams(max_tokens=6)) as judge:
            return list(judge.grade_stream(recs)), judge.engine.stats

    without, plain = grades(0)
    with_store, stats = grades(64)
    assert [(g.id, g.output, g.score, g.probabilities) for g in with_store] == \
        [(g.id, g.output, g.score, g.probabilities) for g in without]
    # From the third record on, each starts from its own question's prompt, not just the system's.
    reused = [g.extra["reused_prompt_tokens"] for g in with_store]
    assert all(r > reused[1] for r in reused[2:]), reused
    assert stats.recalled_tokens > 0 and plain.recalled_tokens == 0
    assert stats.reused_tokens > plain.reused_tokens
