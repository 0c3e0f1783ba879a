"""Requests submitted from many threads into one running engine (SmolLM2-135M, CPU, greedy).

What must hold: every handle's events are complete and in order (token deltas that add up to the
output, then one DoneEvent); texts equal those of a sequential run whatever thread submitted them;
a cancel from another thread frees the sequence at once (the next requests run at full
parallelism); generate() and submit() share the loop; a failing callback ends only its request;
close() ends what is in flight.
"""

from __future__ import annotations

import threading

import pytest

from assets import smollm2_gguf
from prom_local.engine import (DoneEvent, Engine, EngineClosed, EngineConfig, ErrorEvent, GenRequest,
                               SamplingParams, TokenEvent)

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "a red fox", "winter in Seoul", "bread", "the moon", "a small robot", "rain", "tea"]


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def engine(parallel: int, **extra) -> Engine:
    # One thread: the machine is shared, and llama.cpp's spinning pool slows down without a core each.
    return Engine(smollm2_gguf(), EngineConfig(n_ctx=512, gpu_layers=0, n_threads=1, n_parallel=parallel,
                                               **extra))


def request(eng: Engine, i: int, max_tokens: int = 12, **extra) -> GenRequest:
    return GenRequest(tokens=eng.model.tokenize(chat(f"Write one sentence about {TOPICS[i % len(TOPICS)]}.")),
                      params=SamplingParams(max_tokens=max_tokens), tag=i, **extra)


def collect(handle) -> tuple[list, object]:
    events = list(handle.events())
    return events, events[-1]


def check_stream(events: list) -> str:
    """Token deltas, then exactly one DoneEvent last; returns the output text."""
    *tokens, last = events
    assert isinstance(last, DoneEvent) and all(isinstance(e, TokenEvent) for e in tokens)
    assert all(e.tag == last.output.tag for e in tokens)
    assert "".join(e.text for e in tokens) == last.output.text
    return last.output.text


@pytest.fixture(scope="module")
def sequential() -> dict[int, str]:
    with engine(1) as one:
        return {e.output.tag: e.output.text for e in one.generate(request(one, i) for i in range(len(TOPICS)))
                if isinstance(e, DoneEvent)}


def test_threads_submitting_together_get_the_sequential_texts(sequential):
    with engine(3) as eng:
        results: dict[int, str] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def client(ids):
            try:
                start.wait()
                handles = [eng.submit(request(eng, i)) for i in ids]
                for i, h in zip(ids, handles):
                    results[i] = check_stream(list(h.events()))
            except BaseException as exc:  # surfaced below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(list(range(k, len(TOPICS), 4)),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert results == sequential
        assert eng.scheduler.snapshot()["busy"] == 0


def test_cancel_from_another_thread_frees_the_sequence(sequential):
    with engine(3) as eng:
        long = [eng.submit(request(eng, i, max_tokens=400)) for i in range(3)]
        seen = next(long[0].events())            # generation is under way
        assert isinstance(seen, TokenEvent)
        stopper = threading.Thread(target=lambda: [h.cancel() for h in long])
        stopper.start()
        stopper.join()
        for h in long:
            out = h.result()
            assert out.finish_reason == "cancelled" and len(out.tokens) < 400
        snap = eng.scheduler.snapshot()
        assert (snap["busy"], snap["window"], snap["free"]) == (0, 0, 3)
        # Full parallelism afterwards: three requests decode together, not one after another.
        steps = eng.stats.steps
        outs = [h.result() for h in [eng.submit(request(eng, i)) for i in range(3, 6)]]
        assert [o.text for o in outs] == [sequential[i] for i in range(3, 6)]
        generated = max(len(o.tokens) for o in outs)
        assert eng.stats.steps - steps <= generated + 3 + 2   # one round per token + 3 prompt chunks
        assert sum(len(o.tokens) for o in outs) > generated + 3   # ...while sequential needs this many


def test_generate_and_submit_share_the_loop(sequential):
    with engine(2) as eng:
        handle = eng.submit(request(eng, 7))
        done = [e.output for e in eng.generate(request(eng, i) for i in range(3)) if isinstance(e, DoneEvent)]
        assert {o.tag: o.text for o in done} == {i: sequential[i] for i in range(3)}
        assert handle.result().text == sequential[7]


def test_cancel_before_it_runs_and_overflow_and_a_failing_callback():
    with engine(1) as eng:
        blocker = eng.submit(request(eng, 0, max_tokens=400))
        queued = eng.submit(request(eng, 1))       # waits: the only sequence is busy
        queued.cancel()
        out = queued.result()
        assert out.finish_reason == "cancelled" and out.tokens == []
        blocker.cancel()
        assert blocker.result().finish_reason == "cancelled"

        events = list(eng.submit(GenRequest(tokens=[1] * 600, tag="long")).events())
        assert len(events) == 1 and isinstance(events[0], ErrorEvent) and "512" in str(events[0].error)

        def broken(text):
            raise ValueError("callback failed")

        bad = eng.submit(request(eng, 2, on_finish=broken))
        with pytest.raises(ValueError, match="callback failed"):
            bad.result()
        assert eng.scheduler.snapshot()["busy"] == 0
        assert eng.submit(request(eng, 3, max_tokens=3)).result().tokens   # the engine goes on


def test_close_ends_what_is_in_flight():
    eng = engine(2)
    handles = [eng.submit(request(eng, i, max_tokens=400)) for i in range(3)]
    assert isinstance(next(handles[0].events()), TokenEvent)
    later = request(eng, 0)
    eng.close()
    assert eng.ctx is None
    assert {h.result().finish_reason for h in handles} == {"cancelled"}
    with pytest.raises(EngineClosed):
        eng.submit(later)
