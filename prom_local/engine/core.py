"""The engine: a decode loop that carries out the scheduler's decisions against llama.cpp.

It keeps up to `n_parallel` requests in flight as separate sequences of one context, refilled
continuously, and reuses any KV prefix a new request shares with a sequence already in the cache
(llama.cpp's sequence copy), so the system prompt, and the instruction when several responses share
it, is computed once. Who runs next and from which prefix is scheduler.py's call; what the KV cache
holds is cache.py's; requests come in through submission.py (from any thread, or a blocking
`generate`); this module decodes, samples, and turns logits into events.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import ContextOverflow
from .offload import available_memory
from .cache import PrefixCache
from .config import EngineConfig
from .context import LlamaBatch, LlamaContext, SamplerChain, flash_attn_label, flash_attn_request
from .drafts import NgramIndex, accept_drafts, draft_default
from .host_cache import HostPromptCache
from .loading import load
from .requests import DoneEvent, EngineStats, ErrorEvent, Event, GenOutput, GenRequest, TokenEvent, log_softmax
from .exact_kernels import exact_tail, pad_rows
from .scheduler import Active, RequestState, Scheduler
from .submission import Intake, Raised, RequestHandle


@dataclass(eq=False)
class _Progress:
    """What a request has produced so far; fresh for every admission."""

    sampler: SamplerChain
    started: float
    generated: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)
    text: str = ""
    probes: list[tuple[int, np.ndarray, float]] = field(default_factory=list)
    forcing: bool = False          # feeding on_finish's tokens; the next logits end the request
    appended: str = ""
    finish_reason: str = ""
    first_token: float | None = None
    lookup: NgramIndex | None = None   # the prompt and output so far, for drafts (built on first use)
    drafts: list[int] = field(default_factory=list)   # drafted tokens in the batch being decoded
    drafted: int = 0
    accepted: int = 0


class Engine:
    def __init__(self, model_path: str | Path, config: EngineConfig | None = None,
                 on_status: Callable[[str], None] | None = None):
        self.config = config or EngineConfig()
        loaded = load(Path(model_path), self.config, on_status or (lambda message: None))
        self.model, self.plan = loaded.model, loaded.plan
        self.n_ctx, self.n_parallel, self.kv = loaded.n_ctx, loaded.n_parallel, loaded.kv
        self.n_batch = max(self.config.n_batch, self.n_parallel)
        try:
            self.ctx: LlamaContext | None = LlamaContext(
                self.model, n_ctx=self.n_ctx * self.n_parallel, n_seq=self.n_parallel, n_batch=self.n_batch,
                n_threads=self.config.n_threads or len(os.sched_getaffinity(0)),
                flash_attn=flash_attn_request(self.config.flash_attn, self.kv), kv=self.kv)
        except Exception:
            self.model.close()
            raise
        self.flash_attn = self.ctx.flash_attn
        self.exact_tail = exact_tail(self.flash_attn)   # fewest rows a prompt piece is decoded in
        (on_status or (lambda message: None))(
            f"flash attention {'on' if self.flash_attn else 'off'} "
            f"(--flash-attn {flash_attn_label(self.config.flash_attn)})")
        self._batch = LlamaBatch(self.n_batch)
        ahead = self.config.lookahead
        self.lookahead = 1 if self.n_parallel == 1 else max(1, ahead if ahead is not None else 4 * self.n_parallel)
        self.stats = EngineStats()
        mix = self.config.mix_prompts
        self.mix_prompts = self.plan.n_gpu_layers != 0 if mix is None else bool(mix)
        self.host_cache_bytes = _host_cache_limit(self.config.host_cache_mib)
        # Drafts per sequence and step: what was asked (or the measured default), within the batch:
        # every sequence's pending token and its drafts must fit in one batch of n_batch.
        self.draft = max(0, min(draft_default(self.config.draft, self.plan.n_gpu_layers),
                                self.n_batch // self.n_parallel - 1))
        store = HostPromptCache(self.host_cache_bytes) if self.host_cache_bytes else None
        self.cache = PrefixCache(self.n_parallel, self.n_ctx, memory=self.ctx, store=store)
        self.scheduler = Scheduler(self.cache, n_ctx=self.n_ctx, lookahead=self.lookahead,
                                   n_batch=self.n_batch, stats=self.stats, exact_tail=self.exact_tail)
        self._intake = Intake(self._step, on_fault=self._abort_all, on_close=self._cancel_all)

    # -- info -----------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"model": str(self.model.path), "n_ctx": self.n_ctx, "n_parallel": self.n_parallel,
                "gpu_layers": self.plan.layers_on_gpu, "n_layer": self.plan.n_layer,
                "backend": self.plan.backend, "offload": self.plan.reason,
                "host_cache_mib": self.host_cache_bytes >> 20, "cache_type_k": self.kv.k,
                "cache_type_v": self.kv.v, "draft": self.draft, "flash_attn": self.flash_attn}

    def snapshot(self) -> dict:
        """The scheduler's counts (busy, window, free, host cache) for monitoring; any thread."""
        return self.scheduler.snapshot()

    # -- ways in ----------------------------------------------------------------------------------
    def submit(self, request: GenRequest) -> RequestHandle:
        """Queue a request from any thread; it runs in the engine's background loop (a thread
        started on the first submit, stopped by close()). A prompt too long for the context, or
        empty, ends its events with an ErrorEvent."""
        return self._intake.submit(RequestHandle(self._intake, request))

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[Event]:
        """Run requests, up to n_parallel at once; yield token deltas and results as they come.

        Results come in completion order (tagged); callers that need input order reorder them.
        A request that cannot run (prompt too long) yields an ErrorEvent and the rest go on.
        The iterator is read only while a sequence is free.
        """
        return self._intake.generate(iter(requests))

    # -- one step of the loop ---------------------------------------------------------------------
    def _step(self) -> None:
        sched = self.scheduler
        for job in self._intake.take_cancelled():
            self._unstarted(job)
        while sched.room() > 0:
            job = self._intake.next_job()
            if job is None:
                break
            try:
                sched.offer(job)
            except (ContextOverflow, ValueError) as exc:
                self._final(job, ErrorEvent(job.req.tag, exc), whole=True)
        # Cancellation is checked between steps, never mid-decode.
        waiting, running = sched.drop_cancelled()
        for job in waiting:
            self._unstarted(job)
        for active in running:
            active.progress.finish_reason = "cancelled"
            self._final(active.job, DoneEvent(self._release(active)))
        for active in sched.admit():
            req = active.job.req
            active.progress = _Progress(SamplerChain(req.params.for_sample(active.sample), self.model.n_vocab,
                                                     history=req.tokens, budget=active.budget),
                                       time.perf_counter())
        sched.start_waiting()
        runnable = sched.runnable()
        if runnable:
            self._round(runnable)
        else:
            sched.force_oldest()

    def _round(self, runnable: list[Active]) -> None:
        """One round of decoding: a token for every generating sequence, and prompt chunks (oldest
        request first, so a prefix others wait for is ready soonest)."""
        sched = self.scheduler
        if self.draft:
            self._propose(runnable)
        if self.mix_prompts:
            # One batch for all. llama.cpp still splits it into micro-batches of equal tokens per
            # sequence, but a prompt's first token then fills its gap in the generating range,
            # which on a GPU saves a pass over the weights per round.
            self._decode_and_sample(sched.mixed_batch(runnable))
            return
        # Apart: generating tokens together, then one chunk of one prompt on its own. On a CPU this
        # costs nothing (llama.cpp would split a mixed batch into the same pieces), and each prompt
        # is cut where --parallel 1 cuts it (n_batch tokens from the reused prefix on), which
        # keeps the arithmetic, and so the outputs, the same as --parallel 1's.
        generating = sched.generating(runnable)
        if generating:
            self._decode_and_sample(generating)
        # (asked after the generating tokens: a sequence that just ended may now have a forced
        # continuation to feed)
        chunk = sched.prompt_chunk()
        if chunk is not None:
            self._decode_and_sample([chunk])

    def _propose(self, runnable: list[Active]) -> None:
        """Drafts for every generating sequence that has a lookup match: they ride after its
        pending token in this round's batch (drafts.py)."""
        for active in runnable:
            p = active.progress
            if active.prefilling or p.forcing or len(active.pending) != 1:
                continue
            # The last draft's own next token is drawn too, so k drafts can emit k + 1 tokens.
            k = min(self.draft, active.budget - len(p.generated) - 1)
            if k <= 0:
                continue
            if p.lookup is None:
                p.lookup = NgramIndex(active.job.req.tokens)
            p.lookup.extend(p.generated[len(p.lookup.tokens) - len(active.job.req.tokens):])
            p.drafts = p.lookup.draft(k)
            active.pending.extend(p.drafts)

    def _verify(self, active: Active, last: int) -> None:
        """The rows of a drafted sequence: draw a token from each, in order, while it equals the
        draft (drafts.accept_drafts: the model's own output); then drop the rejected drafts' KV."""
        p = active.progress
        drafts, p.drafts = p.drafts, []
        first = last - len(drafts)
        start = self.cache.n[active.seq] - len(drafts) - 1   # position of the pending token
        accepted, rows = accept_drafts(
            drafts, lambda i: p.generated[-1] if self._after_logits(active, first + i) else None)
        # KV kept: the pending token and the accepted drafts (a request that ended keeps the same,
        # so a forced continuation is fed right after them and the prefix cache holds no guess).
        # A continuation decided mid-step was checked (scheduler.fits) before this trim; it fits
        # anyway: _propose drafts within the budget, which leaves the continuation's reserve.
        if self.cache.n[active.seq] > start + rows:
            self.cache.trim(active.seq, start + rows)
        p.drafted += len(drafts)
        p.accepted += accepted
        self.stats.drafted_tokens += len(drafts)
        self.stats.accepted_tokens += accepted
        self.stats.draft_rows += 1

    def _decode_and_sample(self, items: list[tuple[Active, int]]) -> None:
        for active, index in self._decode(items):
            if active.progress.drafts:
                try:
                    self._verify(active, index)
                except Exception as exc:  # as below
                    self._discard(active)
                    active.job.cancel()
                    self._final(active.job, Raised(exc))
                continue
            # A prompt's first logits also start its sibling samples (SamplingParams.n), which
            # have just taken a copy of its KV: each samples its first token from these logits.
            for sample in [active] + self.scheduler.fork(active):
                try:
                    self._after_logits(sample, index)
                except Exception as exc:  # a request's own callback failed: that request ends
                    self._discard(sample)
                    sample.job.cancel()   # and its other samples with it
                    self._final(sample.job, Raised(exc))

    def _decode(self, items: list[tuple[Active, int]]) -> list[tuple[Active, int]]:
        """Decode the next `take` pending tokens of each (active, take); return who got logits where."""
        batch = self._batch
        batch.clear()
        wants: list[tuple[Active, int]] = []
        # By sequence id: llama.cpp cuts a batch over several KV streams into micro-batches of
        # consecutive sequence ids, so any other order costs extra passes over the weights.
        items = sorted(items, key=lambda item: item[0].seq)
        padded = (pad_rows([(a.seq, take, self.n_ctx - self.cache.n[a.seq]) for a, take in items], self.n_batch)
                  if self.flash_attn and self.plan.n_gpu_layers == 0 else set())   # exact_kernels.py
        for active, take in items:
            last = take == len(active.pending)
            rows = 1 + len(active.progress.drafts) if last else 1   # logits for every drafted position
            index = batch.add(active.pending[:take], self.cache.n[active.seq], active.seq, last, rows)
            if last:
                wants.append((active, index))
            if active.seq in padded:
                batch.add(active.pending[take - 1:take], self.cache.n[active.seq] + take, active.seq, False)
        self.ctx.decode(batch)
        for seq in padded:   # the pad row's KV goes again: the sequence ends after its one real token
            self.ctx.seq_rm(seq, self.cache.n[seq] + 1)
        self.scheduler.advance(items)
        self.stats.steps += 1
        self.stats.batch_tokens += batch.n_tokens
        return wants

    def _probe(self, active: Active, index: int) -> np.ndarray:
        log_p = log_softmax(self.ctx.logits(index))
        return np.exp(log_p[np.asarray(active.job.req.probe_ids, dtype=np.int64)])

    def _after_logits(self, active: Active, index: int) -> bool:
        """Act on the logits at batch `index`: probe, draw a token, emit it. True when the request
        goes on generating (its drawn token pending), False when it ended or is being forced."""
        req, p = active.job.req, active.progress
        active.prefilling = False
        if p.forcing:
            final = self._probe(active, index) if req.probe_ids else None
            self._final(active.job, DoneEvent(self._release(active, final)))
            return False
        if req.probe_ids and req.probe_when is not None and req.probe_when(p.text):
            p.probes.append((len(p.text), self._probe(active, index), time.perf_counter()))
        if active.budget <= 0:
            self._finish(active, "length", unfed=None)
            return False
        token = p.sampler.sample(self.ctx, index)
        if req.on_sample is not None:
            req.on_sample(token, self.ctx.logits(index))
        if p.first_token is None:
            p.first_token = time.perf_counter() - p.started
        if self.model.is_eog(token):
            self._finish(active, "stop", unfed=None)
            return False
        p.generated.append(token)
        p.text_bytes += self.model.token_bytes(token)
        # Incomplete UTF-8 at the end (a Korean syllable split over tokens) waits for the next piece.
        text = p.text_bytes.decode("utf-8", "ignore")
        delta, p.text = text[len(p.text):], text
        if delta:
            active.job.sink.put(TokenEvent(req.tag, delta, active.sample))
        if len(p.generated) >= active.budget:
            self._finish(active, "length", unfed=token)
            return False
        active.pending = [token]
        return True

    def _finish(self, active: Active, reason: str, unfed: int | None) -> None:
        p, req = active.progress, active.job.req
        p.finish_reason = reason
        extra = req.on_finish(p.text) if req.on_finish else None
        if extra:
            pending = ([unfed] if unfed is not None else []) + list(extra)
            if self.scheduler.fits(active, len(pending)):  # always, with continuations up to the reserve
                p.forcing = True
                p.appended = self.model.detokenize(extra)
                active.feed(pending)
                return
        self._final(active.job, DoneEvent(self._release(active)))

    # -- endings ----------------------------------------------------------------------------------
    def _final(self, job: RequestState, event, whole: bool = False) -> None:
        """Deliver one sample's last event (`whole`: the request's, as for one never admitted);
        the sink hears finish() once, after the request's last."""
        job.sink.put(event)
        if job.settle(whole):
            job.sink.finish()

    def _unstarted(self, job: RequestState) -> None:
        for i in range(job.n):
            self._final(job, DoneEvent(_unstarted_output(job.req, i)))

    def _release(self, active: Active, final: np.ndarray | None = None) -> GenOutput:
        req, p = active.job.req, active.progress
        out = GenOutput(
            # p.text (not a fresh decode) so probe offsets index the same string; a character cut
            # in half by max_tokens is dropped rather than shown as U+FFFD.
            tag=req.tag, text=p.text, tokens=list(p.generated),
            finish_reason=p.finish_reason or "stop", prompt_tokens=len(req.tokens),
            reused_prompt_tokens=active.reused, probes=p.probes, appended=p.appended,
            final_probe=final, seconds=time.perf_counter() - p.started,
            first_token_seconds=p.first_token, index=active.sample,
            drafted_tokens=p.drafted, accepted_tokens=p.accepted)
        self.stats.prompt_tokens += len(req.tokens)
        self.stats.reused_tokens += active.reused
        self._discard(active)
        return out

    def _discard(self, active: Active) -> None:
        if active.progress is not None:
            active.progress.sampler.close()
        self.scheduler.release(active)

    def _abort_all(self, error: BaseException) -> None:
        """The loop itself failed (llama_decode, or a bug): every request in flight gets the error."""
        for active in self.scheduler.active():
            self._discard(active)
            self._final(active.job, Raised(error))
        while self.scheduler.window:
            self._final(self.scheduler.window.popleft(), Raised(error), whole=True)

    def _cancel_all(self) -> None:
        """On close: everything in flight or queued ends as cancelled."""
        for active in self.scheduler.active():
            active.progress.finish_reason = "cancelled"
            self._final(active.job, DoneEvent(self._release(active)))
        queued = list(self.scheduler.window) + self._intake.drain()
        self.scheduler.window.clear()
        for job in queued:
            self._unstarted(job)

    def close(self) -> None:
        if getattr(self, "_intake", None) is not None:
            self._intake.close()
        if getattr(self, "_batch", None) is not None:
            self._batch.close()
            self._batch = None
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()
            self.ctx = None
        if getattr(self, "model", None) is not None:
            self.model.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _host_cache_limit(mib: int) -> int:
    """Bytes for the host prompt store: --host-cache-mib, but at most a quarter of the RAM free
    once the model is loaded (the store grows as prompts are replaced; it must not push a machine
    that only just fits the model into swap)."""
    if mib <= 0:
        return 0
    free = available_memory()
    return min(mib << 20, free // 4) if free else mib << 20


def _unstarted_output(req: GenRequest, index: int = 0) -> GenOutput:
    return GenOutput(tag=req.tag, text="", tokens=[], finish_reason="cancelled",
                     prompt_tokens=len(req.tokens), reused_prompt_tokens=0, probes=[], index=index)
