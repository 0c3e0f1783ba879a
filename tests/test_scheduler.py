"""The scheduler and the prefix cache without llama.cpp: every decision on made-up token lists.

The engine carries these decisions out against a real context (tests/test_parallel.py checks the
outputs there); here each rule is pinned on its own: admission order and its look-ahead, the bound
on passing over the oldest request, which sequence a request goes to, waiting for a prefix an older
request is computing, refill, cancellation, KV bounds and context overflow.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from prom_local.engine.cache import PrefixCache, common_prefix
from prom_local.engine.config import SamplingParams
from prom_local.engine.requests import GenRequest
from prom_local.engine.scheduler import (CONTINUATION_RESERVE, FORKED, MIN_WAIT_GAIN, RUNNING, WAITING, RequestState,
                                         Scheduler)
from prom_local.errors import ContextOverflow


class Memory:
    """Stands where llama.cpp's KV memory is: records the copy and trim calls it receives."""

    def __init__(self):
        self.calls: list[tuple] = []

    def seq_cp(self, src, dst):
        self.calls.append(("cp", src, dst))

    def seq_rm(self, seq, keep):
        self.calls.append(("rm", seq, keep))


def make(n_parallel=2, n_ctx=512, lookahead=None, n_batch=512):
    memory = Memory()
    cache = PrefixCache(n_parallel, n_ctx, memory=memory)
    ahead = lookahead if lookahead is not None else (1 if n_parallel == 1 else 4 * n_parallel)
    return Scheduler(cache, n_ctx=n_ctx, lookahead=ahead, n_batch=n_batch), memory


def job(tokens, max_tokens=8, tag=None) -> RequestState:
    return RequestState(GenRequest(tokens=list(tokens), params=SamplingParams(max_tokens=max_tokens), tag=tag))


def prompt(prefix: int, body: int, n: int = 40) -> list[int]:
    """`prefix` is a shared opening of 100 tokens (0 = none), `body` makes the rest distinct."""
    head = list(range(1000 * prefix, 1000 * prefix + 100)) if prefix else []
    return head + [50_000 + body * 100 + i for i in range(n)]


def offer(sched, *jobs):
    for j in jobs:
        sched.offer(j)


def prefill(sched, active):
    """As the engine does: decode the whole pending prompt."""
    sched.advance([(active, len(active.pending))])


def run_alone(sched, j, generated=()):
    """Admit, start and prefill one request, decode `generated` after it, then release it: what
    it decoded stays in the cache."""
    sched.offer(j)
    (active,) = sched.admit()
    sched.start_waiting()
    prefill(sched, active)
    if generated:
        sched.cache.append(active.seq, list(generated))
    sched.release(active)
    return active


# ----------------------------------------------------------------------------------------------
# Intake and admission order.

def test_parallel_1_admits_strictly_in_arrival_order():
    sched, _ = make(n_parallel=1)
    jobs = [job(prompt(0, i)) for i in range(3)]
    seen = []
    while jobs or sched.window:
        while sched.room() and jobs:
            sched.offer(jobs.pop(0))
        (active,) = sched.admit()
        seen.append(active.job)
        sched.start_waiting()
        prefill(sched, active)
        sched.release(active)
    assert [j.index for j in seen] == [0, 1, 2]


def test_room_only_while_a_sequence_is_free_and_within_the_lookahead():
    sched, _ = make(n_parallel=2, lookahead=3)
    assert sched.room() == 3
    offer(sched, job(prompt(0, 1)), job(prompt(0, 2)))
    assert sched.room() == 1
    sched.admit()
    assert sched.room() == 0          # both sequences busy: read nothing, even with window space
    assert not sched.has_free_slot()


def test_free_sequence_takes_the_request_sharing_the_longest_prefix():
    sched, _ = make(n_parallel=2)
    run_alone(sched, job(prompt(1, 0)))            # sequence holds prefix 1
    offer(sched, job(prompt(2, 1), tag="other"), job(prompt(1, 2), tag="shares"))
    first, second = sched.admit()
    assert first.job.req.tag == "shares" and second.job.req.tag == "other"


def test_ties_go_to_the_oldest():
    sched, _ = make(n_parallel=2)
    offer(sched, job(prompt(0, 1), tag="a"), job(prompt(0, 2), tag="b"))
    assert [a.job.req.tag for a in sched.admit()] == ["a", "b"]


def test_the_oldest_is_passed_over_at_most_n_parallel_times():
    n_parallel = 2
    sched, _ = make(n_parallel=n_parallel, lookahead=8)
    run_alone(sched, job(prompt(1, 0)))
    # The oldest shares nothing; every later request shares prefix 1 with the cache.
    offer(sched, job(prompt(2, 99), tag="oldest"), *[job(prompt(1, i), tag=f"s{i}") for i in range(1, 6)])
    order = []
    while len(order) <= n_parallel:
        for active in sched.admit():
            order.append(active.job.req.tag)
            sched.release(active)   # as if it finished at once
    assert order[:n_parallel] == ["s1", "s2"]          # passed over while others share more...
    assert order[n_parallel] == "oldest"               # ...but only n_parallel times


def test_admission_refills_freed_sequences():
    sched, _ = make(n_parallel=2)
    offer(sched, *[job(prompt(0, i), tag=i) for i in range(3)])
    a, b = sched.admit()
    assert sched.admit() == [] and len(sched.window) == 1
    sched.release(a)
    (c,) = sched.admit()
    assert c.job.req.tag == 2 and c.seq == a.seq
    assert c is not a and c.pending == [] and c.reused == 0 and c.state == WAITING  # fresh state


# ----------------------------------------------------------------------------------------------
# Which sequence, and from which cached prefix.

def test_a_request_goes_back_to_the_sequence_holding_its_prefix_without_a_copy():
    sched, memory = make(n_parallel=3)
    for i, p in enumerate((1, 2, 3)):
        offer(sched, job(prompt(p, i)))
    actives = sched.admit()
    sched.start_waiting()
    for a in actives:
        prefill(sched, a)
        sched.release(a)
    holder = next(a.seq for a in actives if a.job.req.tokens[0] == 2000)
    memory.calls.clear()
    sched.offer(job(prompt(2, 7)))
    (active,) = sched.admit()
    sched.start_waiting()
    assert active.seq == holder
    assert memory.calls == [("rm", holder, 100)]       # trimmed to the shared part, no copy
    assert active.reused == 100 and active.pending == prompt(2, 7)[100:]


def test_eviction_spares_the_prefix_that_waiting_requests_need():
    sched, _ = make(n_parallel=2, lookahead=8)
    first = run_alone(sched, job(prompt(1, 0)))
    second = run_alone(sched, job(prompt(2, 0)))
    assert {first.seq, second.seq} == {0, 1}
    # A request sharing nothing arrives, with a request for prefix 2 behind it in the window.
    offer(sched, job(prompt(3, 1), tag="new"), job(prompt(2, 5), tag="later"))
    sched._skips = sched.n_parallel   # make the oldest go first, to see where it is put
    new = sched.admit()[0]
    assert new.job.req.tag == "new" and new.seq == first.seq   # evicts prefix 1, keeps prefix 2


def test_copy_from_another_sequence_then_trim():
    sched, memory = make(n_parallel=2)
    holder = run_alone(sched, job(prompt(1, 0)))
    # Occupy the holder so the next request must go to the other sequence and copy.
    sched.offer(job(prompt(1, 0, n=40)))
    (busy,) = sched.admit()
    assert busy.seq == holder.seq
    sched.start_waiting()
    memory.calls.clear()
    sched.offer(job(prompt(1, 3)))
    (active,) = sched.admit()
    sched.start_waiting()
    assert active.seq != holder.seq
    assert memory.calls == [("cp", holder.seq, active.seq), ("rm", active.seq, 100)]
    assert sched.cache.tokens(active.seq).tolist() == prompt(1, 0)[:100]


# ----------------------------------------------------------------------------------------------
# Waiting for a prefix an older request is computing.

def test_a_request_waits_for_a_shared_prefix_in_progress_then_copies_it():
    sched, memory = make(n_parallel=2)
    offer(sched, job(prompt(1, 1)), job(prompt(1, 2)))
    older, newer = sched.admit()
    sched.start_waiting()
    assert older.state == RUNNING and newer.state == WAITING
    assert sched.stats.waits == 1
    assert [a for a, _ in [sched.prompt_chunk()]] == [older]
    sched.start_waiting()                      # still computing: still waiting, counted once
    assert newer.state == WAITING and sched.stats.waits == 1
    prefill(sched, older)
    memory.calls.clear()
    sched.start_waiting()
    assert newer.state == RUNNING and newer.reused == 100
    assert memory.calls == [("cp", older.seq, newer.seq), ("rm", newer.seq, 100)]


def test_no_wait_when_the_gain_is_below_min_wait_gain():
    sched, _ = make(n_parallel=2)
    short = MIN_WAIT_GAIN - 1
    a = list(range(short)) + [7_000 + i for i in range(40)]
    b = list(range(short)) + [8_000 + i for i in range(40)]
    offer(sched, job(a), job(b))
    older, newer = sched.admit()
    sched.start_waiting()
    assert older.state == newer.state == RUNNING and sched.stats.waits == 0
    assert newer.reused == 0


def test_force_oldest_starts_a_waiting_request():
    sched, _ = make(n_parallel=2)
    offer(sched, job(prompt(1, 1)), job(prompt(1, 2)))
    older, newer = sched.admit()
    sched.start_waiting()
    sched.release(older)        # the request it waited for went away mid-prompt
    assert sched.runnable() == []
    assert sched.force_oldest() and newer.state == RUNNING


# ----------------------------------------------------------------------------------------------
# Rounds.

def test_prompt_chunks_oldest_first_within_n_batch_and_mixed_batches_fill_the_room():
    sched, _ = make(n_parallel=3, n_batch=64)
    offer(sched, *[job(prompt(0, i, n=100)) for i in range(3)])
    a, b, c = sched.admit()
    sched.start_waiting()
    assert sched.prompt_chunk() == (a, 64)
    sched.advance([(a, 64)])
    assert sched.prompt_chunk() == (a, 36)
    sched.advance([(a, 36)])
    a.prefilling, a.pending = False, [5]       # a now generates
    items = sched.mixed_batch(sched.runnable())
    assert items == [(a, 1), (b, 63)]          # 1 generated token + the oldest prompt's chunk
    assert sched.generating(sched.runnable()) == [(a, 1)]


# ----------------------------------------------------------------------------------------------
# Cancellation, KV bounds, overflow.

def test_cancelled_requests_leave_the_window_and_their_sequences():
    sched, _ = make(n_parallel=1, lookahead=1)
    flag = threading.Event()
    running = job(prompt(0, 1))
    running.req.cancel = flag
    sched.offer(running)
    (active,) = sched.admit()
    queued = job(prompt(0, 2))
    sched.offer(queued)
    assert sched.drop_cancelled() == ([], [])
    flag.set()
    queued.cancel()
    waiting, holding = sched.drop_cancelled()
    assert waiting == [queued] and holding == [active] and not sched.window
    sched.release(active)
    assert sched.has_free_slot() and sched.idle()


def test_kv_budget_and_continuation_fit():
    sched, _ = make(n_parallel=1, n_ctx=256)
    assert sched.budget(100, 8) == 8
    assert sched.budget(200, 512) == 256 - 200 - CONTINUATION_RESERVE
    assert sched.budget(250, 512) == 0
    sched.offer(job(range(200), max_tokens=512))
    (active,) = sched.admit()
    assert active.budget == 256 - 200 - CONTINUATION_RESERVE
    sched.start_waiting()
    prefill(sched, active)
    sched.advance([(active, 0)])
    sched.cache.append(active.seq, [1] * active.budget)       # generated up to the budget
    assert sched.fits(active, CONTINUATION_RESERVE)           # the forced continuation still fits
    assert not sched.fits(active, CONTINUATION_RESERVE + 1)


def test_a_prompt_too_long_for_its_sequence_is_refused():
    sched, _ = make(n_parallel=2, n_ctx=256)
    ok_len = 256 - CONTINUATION_RESERVE - 1
    sched.offer(job(range(ok_len)))
    with pytest.raises(ContextOverflow, match="256"):
        sched.offer(job(range(ok_len + 1), max_tokens=9))
    assert len(sched.window) == 1 and sched.window[0].index == 0
    sched.offer(job(range(10)))
    assert sched.window[1].index == 1          # the refused one took no arrival number


def test_an_empty_prompt_is_refused():
    sched, _ = make()
    with pytest.raises(ValueError, match="no tokens"):
        sched.offer(job([]))
    assert not sched.window


def test_common_prefix_respects_the_limit():
    a = np.arange(10)
    assert common_prefix(a, np.arange(10), 9) == 9       # the last prompt token is never reused
    assert common_prefix(a, np.r_[np.arange(4), [99]], 9) == 4
    assert common_prefix(a, [], 9) == 0


# ----------------------------------------------------------------------------------------------
# Samples of one prompt (SamplingParams.n): admitted together, the prompt computed once, forked.

def sampled(tokens, n, max_tokens=8) -> RequestState:
    return RequestState(GenRequest(tokens=list(tokens), params=SamplingParams(max_tokens=max_tokens, n=n)))


def test_samples_are_admitted_together_and_only_the_first_computes_the_prompt():
    sched, memory = make(n_parallel=3)
    j = sampled(prompt(0, 1), n=3)
    sched.offer(j)
    first, *siblings = sched.admit()
    assert [a.sample for a in (first, *siblings)] == [0, 1, 2]
    assert len({a.seq for a in (first, *siblings)}) == 3 and not sched.has_free_slot()
    assert first.forks == siblings and all(a.state == FORKED for a in siblings)
    sched.start_waiting()
    assert sched.runnable() == [first]                 # siblings wait; they never prefill
    assert first.pending == prompt(0, 1) and all(not a.pending for a in siblings)
    assert not memory.calls or all(c[0] == "rm" for c in memory.calls)   # nothing copied yet


def test_fork_copies_the_whole_prompt_kv_to_each_sibling():
    sched, memory = make(n_parallel=3)
    tokens = prompt(0, 1)
    sched.offer(sampled(tokens, n=3))
    first, *siblings = sched.admit()
    sched.start_waiting()
    prefill(sched, first)
    memory.calls.clear()
    started = sched.fork(first)
    assert started == siblings
    for s in siblings:
        assert ("cp", first.seq, s.seq) in memory.calls
        assert list(sched.cache.tokens(s.seq)) == tokens     # all of it: nothing left to compute
        assert s.reused == len(tokens) and s.state == RUNNING and not s.prefilling
    assert sched.stats.forked_tokens == 2 * len(tokens)
    assert sched.fork(first) == []                           # once only


def test_samples_wait_for_enough_free_sequences_and_nothing_overtakes_them():
    sched, _ = make(n_parallel=3)
    sched.offer(job(prompt(0, 1)))
    (run_alone_active,) = sched.admit()
    group, later = sampled(prompt(0, 2), n=3), job(prompt(0, 3))
    offer(sched, group, later)
    assert sched.admit() == []            # 2 free < 3 samples: wait, and `later` does not jump ahead
    sched.release(run_alone_active)
    admitted = sched.admit()
    assert [a.job for a in admitted] == [group] * 3 and list(sched.window) == [later]


def test_more_samples_than_sequences_is_refused():
    sched, _ = make(n_parallel=2)
    with pytest.raises(ValueError, match="3 samples of one prompt need 3 parallel sequences"):
        sched.offer(sampled(prompt(0, 1), n=3))
    assert not sched.window


def test_a_cancelled_sampled_request_leaves_all_its_sequences():
    sched, _ = make(n_parallel=3)
    j = sampled(prompt(0, 1), n=3)
    sched.offer(j)
    admitted = sched.admit()
    j.cancel()
    _, holding = sched.drop_cancelled()
    assert holding == admitted
    for a in holding:
        sched.release(a)
    assert sched.fork(admitted[0]) == []     # released siblings are not started
    assert sched.idle()


def test_a_job_settles_after_its_last_sample():
    j = sampled(prompt(0, 1), n=3)
    assert [j.settle(), j.settle(), j.settle()] == [False, False, True]
    refused = sampled(prompt(0, 1), n=3)
    assert refused.settle(whole=True)
