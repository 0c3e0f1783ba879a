"""The scheduler: which request runs in which sequence, when, from which cached prefix.

Pure Python; it decides and the engine carries its decisions out against llama.cpp. In one
paragraph: when a sequence is free, requests are read a few at a time into a look-ahead window
(arrival order). A free sequence takes the window's request that shares the longest prefix with
what is cached or being computed, unless the oldest request has been passed over n_parallel times
(so output, which the judge writes in input order, is never held back long). A new request first
*waits* while an older one is still computing a prefix they share, then copies that KV instead of
computing the same tokens in parallel. Each round decodes one token of every generating sequence
together, and a chunk of the oldest unfinished prompt.

A request for n samples of one prompt (SamplingParams.n) is admitted when n sequences are free:
the first computes the prompt, the others wait (FORKED) until its logits are ready, then take a
copy of its KV and sample from the same logits, each with its own sampler, so the prompt is
computed once whatever n is.

Each admitted request gets a fresh `Active` (its state while it holds a sequence); releasing it
drops that object and leaves the sequence's KV in the prefix cache for the next request.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ContextOverflow
from .cache import MIN_RECALL_GAIN, PrefixCache, common_prefix
from .requests import EngineStats, GenRequest

# Room kept after the generated text for the forced-score continuation ("\n  [RESULT] N").
CONTINUATION_RESERVE = 16
# Waiting for another sequence's prefix is only worth it when it saves at least this many tokens.
MIN_WAIT_GAIN = 32
# Fewest prompt tokens decoded together in one chunk. llama.cpp's CPU backend picks its matmul
# kernel by batch width: llamafile's tiled kernels serve n >= 2 on x86 (n >= 8 for f16 on ARM),
# a single token goes through ggml's dot products, which may round differently (whether they do
# depends on the CPU and the build). A prompt whose cached prefix ended one token short of it, or a
# long prompt whose last n_batch chunk is a lone token, could then differ from its cold computation
# in the last bits, which was seen to flip a greedy choice.
# So no prompt chunk is narrower than this: reuse stops this many tokens before a prompt's end,
# and chunks are cut so that none is left this short (re-computing <8 tokens costs nothing).
# With flash attention on, the CPU's attention kernel has a threshold of its own, 64 rows
# (exact_kernels.FLASH_ATTN_TILE_ROWS): the engine then passes that as the scheduler's exact_tail.
EXACT_TAIL = 8

WAITING, RUNNING, FORKED = "waiting", "running", "forked"   # forked: waits for a sibling's prompt


class RequestState:
    """A request inside the engine: its tokens as an array (prefix matching runs on every
    admission), its arrival number once in the window, and who hears about it (`sink`)."""

    __slots__ = ("req", "arr", "index", "sink", "_cancelled", "outstanding")

    def __init__(self, req: GenRequest, sink: Any = None):
        self.req = req
        self.arr = np.asarray(req.tokens, dtype=np.int64)
        self.index = -1
        self.sink = sink
        self._cancelled = False
        self.outstanding = self.n   # samples not yet ended; the sink hears finish() after the last

    @property
    def n(self) -> int:
        return max(1, self.req.params.n)

    def settle(self, whole: bool = False) -> bool:
        """One sample ended (or, `whole`, the request did, as a refused one does); True once
        nothing of the request is left in the engine."""
        self.outstanding = 0 if whole else self.outstanding - 1
        return self.outstanding <= 0

    def cancel(self) -> None:
        self._cancelled = True   # a plain flag: set from any thread, read between steps

    @property
    def cancelled(self) -> bool:
        return (self._cancelled or (self.req.cancel is not None and self.req.cancel.is_set())
                or bool(getattr(self.sink, "cancelled", False)))


@dataclass(eq=False)
class Active:
    """A request while it holds sequence `seq`: created on admission, dropped on release."""

    job: RequestState
    seq: int
    admitted: int                 # admission number: older requests get the prefill budget first
    budget: int                   # max tokens this request may generate
    state: str = WAITING
    pending: list[int] = field(default_factory=list)   # tokens to feed before the next logits
    prefilling: bool = True       # pending is (part of) the prompt or a forced continuation
    reused: int = 0               # prompt tokens taken from the cache
    counted_wait: bool = False
    progress: Any = None          # the engine's per-request output state
    sample: int = 0               # which of the request's samples this sequence draws
    forks: list["Active"] = field(default_factory=list)   # sibling samples waiting on this prompt

    def feed(self, tokens: list[int]) -> None:
        """Tokens to decode (a continuation) before the next logits."""
        self.pending = tokens
        self.prefilling = True


class Scheduler:
    def __init__(self, cache: PrefixCache, *, n_ctx: int, lookahead: int, n_batch: int,
                 stats: EngineStats | None = None, exact_tail: int = EXACT_TAIL):
        self.cache = cache
        self.exact_tail = exact_tail      # fewest prompt tokens a chunk is cut to (EXACT_TAIL)
        self.n_parallel = cache.n_seq
        self.n_ctx = n_ctx                # tokens per sequence
        self.lookahead = lookahead
        self.n_batch = n_batch
        self.stats = stats or EngineStats()
        self.slots: list[Active | None] = [None] * self.n_parallel
        self.window: collections.deque[RequestState] = collections.deque()
        self._arrivals = 0
        self._admissions = 0
        self._skips = 0  # times the oldest waiting request was passed over

    # -- views ------------------------------------------------------------------------------------
    def active(self) -> list[Active]:
        return [a for a in self.slots if a is not None]

    def has_free_slot(self) -> bool:
        return any(a is None for a in self.slots)

    def idle(self) -> bool:
        return not self.window and all(a is None for a in self.slots)

    def snapshot(self) -> dict:
        """Counts for monitoring; safe to read from any thread (a fixed list and a length)."""
        busy = sum(a is not None for a in self.slots)
        store = self.cache.store
        return {"busy": busy, "window": len(self.window), "free": self.n_parallel - busy,
                "host_cache_bytes": store.nbytes if store else 0, "host_cache_entries": len(store) if store else 0,
                "host_cache_loads": store.loads if store else 0}

    # -- intake -----------------------------------------------------------------------------------
    def budget(self, n_prompt: int, max_tokens: int) -> int:
        """Tokens a request may generate: max_tokens, cut so that prompt, generated text and the
        forced continuation stay within the sequence's n_ctx."""
        return max(0, min(max_tokens, self.n_ctx - n_prompt - CONTINUATION_RESERVE))

    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt + CONTINUATION_RESERVE + 1 > self.n_ctx:
            raise ContextOverflow(n_prompt, self.n_ctx, max_tokens)

    def room(self) -> int:
        """Requests to read now: only while a sequence is free, up to the look-ahead window, so a
        source that blocks for its next item stalls nobody who could be decoding."""
        return max(0, self.lookahead - len(self.window)) if self.has_free_slot() else 0

    def offer(self, job: RequestState) -> None:
        """Take a request into the window, or raise ContextOverflow if its prompt cannot fit (and
        ValueError for an empty one, which would have no logits to start from)."""
        if not job.req.tokens:
            raise ValueError("the prompt has no tokens")
        if job.n > self.n_parallel:
            raise ValueError(f"{job.n} samples of one prompt need {job.n} parallel sequences; "
                             f"the engine has {self.n_parallel}")
        self.check_fits(len(job.req.tokens), job.req.params.max_tokens)
        job.index = self._arrivals
        self._arrivals += 1
        self.window.append(job)

    # -- cancellation (between steps, never mid-decode) -------------------------------------------
    def drop_cancelled(self) -> tuple[list[RequestState], list[Active]]:
        """Cancelled requests: those still in the window (removed here) and those holding a
        sequence (the caller reports and releases them)."""
        waiting = [j for j in self.window if j.cancelled]
        for job in waiting:
            self.window.remove(job)
        return waiting, [a for a in self.slots if a is not None and a.job.cancelled]

    # -- admission --------------------------------------------------------------------------------
    def admit(self) -> list[Active]:
        """Give free sequences to window requests; returns the new Actives (state WAITING)."""
        admitted = []
        while self.window and self.has_free_slot():
            job = self.window[0] if self._skips >= self.n_parallel else self._pick()
            free = [s for s, a in enumerate(self.slots) if a is None]
            if job.n > len(free):
                break   # its samples start together; the sequences in use free up, none refill first
            self.window.remove(job)
            oldest = min([job.index] + [j.index for j in self.window])
            self._skips = 0 if job.index == oldest else self._skips + 1
            seq = self.cache.choose(free, job.arr, (j.arr for j in self.window))
            first = self._admit(seq, job)
            admitted.append(first)
            for i in range(1, job.n):
                # The siblings' sequences: those whose cache the upcoming prompts need least.
                free.remove(admitted[-1].seq)
                seq = self.cache.choose(free, job.arr, (j.arr for j in self.window))
                sibling = self._admit(seq, job, sample=i)
                sibling.state = FORKED
                first.forks.append(sibling)
                admitted.append(sibling)
        return admitted

    def _pick(self) -> RequestState:
        """The window's request whose prompt shares the most with what is cached or being
        computed; ties go to the oldest."""
        best, best_n = self.window[0], -1
        for job in self.window:
            limit = len(job.arr) - 1
            n = max((self._will_share(s, job.arr, limit) for s in range(self.n_parallel)
                     if self.slots[s] is not None or self.cache.n[s]), default=0)
            if n > best_n:
                best, best_n = job, n
        return best

    def _will_share(self, seq: int, arr: np.ndarray, limit: int) -> int:
        """Tokens of arr whose KV sequence seq holds or is about to compute (its prompt)."""
        have = self.cache.shared(seq, arr, limit)
        active = self.slots[seq]
        return have if active is None else max(have, common_prefix(active.job.arr, arr, limit))

    def _admit(self, seq: int, job: RequestState, sample: int = 0) -> Active:
        self._admissions += 1
        self.cache.touch(seq, self._admissions)
        active = Active(job=job, seq=seq, admitted=self._admissions, sample=sample,
                        budget=self.budget(len(job.req.tokens), job.req.params.max_tokens))
        self.slots[seq] = active
        return active

    # -- starting: a KV prefix for each waiting request -------------------------------------------
    def start_waiting(self) -> None:
        """Start waiting requests, oldest first; one that does not start also does not run this
        step. If nothing could run at all, the oldest starts anyway (never hang)."""
        for active in sorted((a for a in self.active() if a.state == WAITING), key=lambda a: a.admitted):
            self._start(active)

    def force_oldest(self) -> bool:
        waiting = [a for a in self.active() if a.state == WAITING]
        if waiting:  # unreachable by construction (the oldest never waits); never hang
            self._start(min(waiting, key=lambda a: a.admitted), force=True)
        return bool(waiting)

    def _start(self, active: Active, force: bool = False) -> None:
        """Give a waiting request its KV prefix and start its prompt, or let it wait for a prefix
        that an older request is computing right now."""
        arr = active.job.arr
        limit = max(0, len(arr) - self.exact_tail)
        src, have = self.cache.longest(arr, limit, prefer=active.seq)
        stored = self.cache.recallable(arr, limit)
        if not force:
            coming = max((self._will_share(o.seq, arr, limit) for o in self.active()
                          if o is not active and o.admitted < active.admitted), default=0)
            if coming >= max(have, stored) + MIN_WAIT_GAIN:
                if not active.counted_wait:
                    self.stats.waits += 1
                    active.counted_wait = True
                return
        if stored >= have + MIN_RECALL_GAIN:
            recalled = self.cache.recall(active.seq, arr, limit)
            if recalled > have:
                src, have = active.seq, recalled
                self.stats.recalled_tokens += recalled
        self.cache.reuse(active.seq, src, have)
        active.reused = have
        active.pending = list(active.job.req.tokens[have:])
        active.state = RUNNING

    def fork(self, active: Active) -> list[Active]:
        """When `active` has its prompt's logits: its waiting siblings take a copy of its KV (the
        prompt, all of it) and are returned, to sample from those same logits. [] otherwise."""
        forks, active.forks = active.forks, []
        started = []
        for sibling in forks:
            if self.slots[sibling.seq] is not sibling:   # released meanwhile (cancelled)
                continue
            self.cache.reuse(sibling.seq, active.seq, self.cache.n[active.seq])
            sibling.reused = len(sibling.job.req.tokens)
            self.stats.forked_tokens += sibling.reused
            sibling.state = RUNNING
            sibling.prefilling = False
            started.append(sibling)
        return started

    # -- rounds -----------------------------------------------------------------------------------
    def runnable(self) -> list[Active]:
        return [a for a in self.slots if a is not None and a.state == RUNNING and a.pending]

    def generating(self, runnable: list[Active]) -> list[tuple[Active, int]]:
        # A generating sequence's pending token, and the drafts that follow it (core._propose).
        return [(a, len(a.pending)) for a in runnable if not a.prefilling]

    def mixed_batch(self, runnable: list[Active]) -> list[tuple[Active, int]]:
        """A token of every generating sequence, and prompt chunks, oldest first, in the room left."""
        items = self.generating(runnable)
        room = self.n_batch - sum(take for _, take in items)
        for active in sorted((a for a in runnable if a.prefilling), key=lambda a: a.admitted):
            take = min(len(active.pending), room)
            if take <= 0:
                break
            items.append((active, take))
            room -= take
        return items

    def prompt_chunk(self) -> tuple[Active, int] | None:
        """The next chunk of the oldest request that has prompt (or continuation) left to feed."""
        prompts = [a for a in self.slots if a is not None and a.state == RUNNING and a.prefilling and a.pending]
        if not prompts:
            return None
        active = min(prompts, key=lambda a: a.admitted)
        take = min(len(active.pending), self.n_batch)
        tail = self.exact_tail
        if 0 < len(active.pending) - take < tail and take - tail >= tail:
            take -= tail   # never leave a last chunk narrower than the tail
        return active, take

    def advance(self, items: list[tuple[Active, int]]) -> None:
        """Bookkeeping after a successful decode of items."""
        self.cache.copies_done()
        for active, take in items:
            # A prompt piece of at least the tail rows is computed as a cold run computes it.
            self.cache.append(active.seq, active.pending[:take], exact=active.prefilling and take >= self.exact_tail)
            del active.pending[:take]

    def fits(self, active: Active, n_more: int) -> bool:
        """Whether n_more tokens still fit the sequence (always, for continuations within the reserve)."""
        return self.cache.n[active.seq] + n_more <= self.n_ctx

    def release(self, active: Active) -> None:
        """Free the sequence. Tokens never decoded (cancelled mid-prompt) are not in the cache;
        what was decoded stays for the next request to reuse."""
        if self.slots[active.seq] is active:
            self.slots[active.seq] = None
