"""The per-run llama.cpp objects: a context (KV cache, decode, logits), a batch, a sampler chain.

Each class owns one C object and frees it; none of them knows about requests or scheduling.
`LlamaContext` also serves as the prefix cache's `memory` (sequence copy, trim, save and load).
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Sequence

import numpy as np

from ..errors import ModelLoadError
from .offload import F16, KVTypes
from .config import SamplingParams
from .llama import LOG, LlamaModel, require_llama


def flash_attn_request(flash_attn: bool | None, kv: KVTypes = F16) -> bool | None:
    """The flash attention setting to ask llama.cpp for (True, False, or None: llama.cpp's `auto`,
    on wherever its device runs the op, the CPU included)."""
    if kv.needs_flash_attn:
        # llama.cpp refuses a context with a quantized V cache and flash attention off.
        if flash_attn is False:
            raise ModelLoadError(f"a {kv.v} V cache needs flash attention, which was turned off: use "
                                 "--cache-type-v f16 or --flash-attn auto")
        return True
    # auto is llama.cpp's own default, and on these machines' CPUs it makes long prompts (most of
    # a judge's work) ~30% faster; the price, a prompt's logits depending on how it is cut into
    # pieces, is paid by the scheduler never cutting a piece under exact_kernels.FLASH_ATTN_TILE_ROWS
    # (exact_kernels.exact_tail). docs/exactness.md has the measured effect on scores.
    return flash_attn


def flash_attn_label(flash_attn: bool | None) -> str:
    return {None: "auto", True: "on", False: "off"}[flash_attn]


def flash_attn_plan(flash_attn: bool | None, kv: KVTypes = F16) -> str:
    """What a context will use, said before one is made (doctor reads no weights)."""
    if kv.needs_flash_attn:
        return f"flash attention on (a {kv.v} V cache needs it)"
    if flash_attn is None:
        return "flash attention auto: on wherever llama.cpp's device runs it (CPUs and current GPUs do)"
    return f"flash attention {flash_attn_label(flash_attn)} (--flash-attn)"


class LlamaContext:
    """A llama.cpp context of `n_seq` sequences with one KV stream each."""

    def __init__(self, model: LlamaModel, *, n_ctx: int, n_seq: int, n_batch: int, n_threads: int,
                 flash_attn: bool | None, kv: KVTypes = F16):
        ll = require_llama()
        self.model = model
        params = ll.llama_context_default_params()
        # One KV stream per sequence (not llama.cpp's unified cache): attention then reads only a
        # sequence's own cells. With a unified cache every token's attention also walks the other
        # sequences' cells, which on CPU made prompts ~30% and generated tokens ~70% slower at
        # 4 x 1,300 tokens; it also made results depend on where other sequences' cells lie.
        # Sharing a prefix is then a copy of the source stream (llama.cpp copies whole streams,
        # a memcpy far cheaper than recomputing the prefix), trimmed to the shared part.
        # The scheduler keeps each sequence within n_ctx // n_seq tokens, so no stream fills up.
        params.n_ctx = n_ctx
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        params.type_k, params.type_v = _ggml_type(ll, kv.k), _ggml_type(ll, kv.v)
        params.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_AUTO if flash_attn is None else
                                  ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        mark = LOG.mark()
        self._ctx = ll.llama_init_from_model(model.handle, params)
        if not self._ctx:
            raise ModelLoadError(f"{model.path}: could not create a llama.cpp context of "
                                 f"{params.n_ctx} tokens (KV cache {kv.label}){LOG.why()}")
        # What llama.cpp chose for `auto`: it says so in its log while it builds the context
        # (llama-context.cpp, "Flash Attention enabled" or "... not supported, set to disabled"),
        # and has no function that tells.
        self.flash_attn = flash_attn if flash_attn is not None else _resolved_auto(LOG.since(mark))
        self._ll = ll
        self._mem = ll.llama_get_memory(self._ctx)
        self._n_vocab = model.n_vocab

    @property
    def handle(self):
        return self._ctx

    def decode(self, batch: "LlamaBatch") -> None:
        rc = self._ll.llama_decode(self._ctx, batch.handle)
        if rc != 0:
            # 1 = no room in the KV cache: impossible while every sequence stays within its bound,
            # so this is a bug; llama.cpp has restored the cache, and no bookkeeping was advanced.
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {batch.n_tokens} "
                               f"tokens{': ' + LOG.tail(3) if LOG.tail() else ''}")

    def logits(self, index: int) -> np.ndarray:
        """The logits row of batch position `index` (a view valid until the next decode)."""
        ptr = self._ll.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    # -- KV memory, as the prefix cache asks for it ----------------------------------------------
    def seq_cp(self, src: int, dst: int) -> None:
        # Whole-stream copy (the only kind llama.cpp does across streams); the data moves at the
        # start of the next decode, before that batch writes anything.
        self._ll.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def seq_rm(self, seq: int, keep: int) -> None:
        """Drop positions keep.. of a sequence."""
        self._ll.llama_memory_seq_rm(self._mem, seq, keep, -1)

    def seq_save(self, seq: int) -> np.ndarray | None:
        """The sequence's state (its cells' positions, K and V) as bytes in host memory."""
        size = self._ll.llama_state_seq_get_size(self._ctx, seq)
        if not size:
            return None
        # Its own anonymous mapping, not the heap: states of a few MB come and go as the store
        # evicts, and glibc may keep freed heap blocks of that size in the process (it raises its
        # mmap threshold after such frees); an unmapped one is returned to the system at once.
        buf = np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8)
        n = self._ll.llama_state_seq_get_data(self._ctx, _u8(buf), size, seq)
        return buf[:n] if n else None

    def seq_load(self, seq: int, data: np.ndarray) -> bool:
        """Replace the sequence with a state seq_save gave (from any sequence of this context)."""
        return self._ll.llama_state_seq_set_data(self._ctx, _u8(data), data.size, seq) == data.size

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            self._ll.llama_free(self._ctx)
            self._ctx = None


def _resolved_auto(log_lines: list[str]) -> bool:
    for line in log_lines:
        if "Flash Attention" in line:
            return "disabled" not in line
    return True   # no word: llama.cpp's auto is on unless it finds the op on another device


def _ggml_type(ll, name: str) -> int:
    return {"f16": ll.GGML_TYPE_F16, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}[name]


def _u8(buf: np.ndarray):
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


class LlamaBatch:
    """A llama_batch of up to `capacity` tokens, one sequence id per token."""

    def __init__(self, capacity: int):
        self._ll = require_llama()
        self.capacity = capacity
        self._batch = self._ll.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    @property
    def handle(self):
        return self._batch

    def clear(self) -> None:
        self.n_tokens = self._batch.n_tokens = 0

    def add(self, tokens: list[int], pos0: int, seq_id: int, logits_last: bool, n_logits: int = 1) -> int:
        """Append tokens at positions pos0.. of seq_id; returns the batch index of the last one.
        With logits_last, the last n_logits tokens get logits (more than one: drafts to verify)."""
        b, n = self._batch, self.n_tokens
        for j, token in enumerate(tokens):
            b.token[n] = token
            b.pos[n] = pos0 + j
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = seq_id
            b.logits[n] = 0
            n += 1
        if logits_last:
            for i in range(n - min(n_logits, len(tokens)), n):
                b.logits[i] = 1
        self.n_tokens = b.n_tokens = n
        return n - 1

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._ll.llama_batch_free(self._batch)
            self._batch = None


class SamplerChain:
    """llama.cpp's sampler chain for one request's SamplingParams."""

    def __init__(self, params: SamplingParams, n_vocab: int, history: Sequence[int] = (),
                 budget: int | None = None):
        # budget: the tokens this sequence may generate, as the scheduler cut them to the context
        # (never the client's max_tokens, which may be anything).
        ll = self._ll = require_llama()
        chain = self._chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        p = params
        if p.repeat_penalty != 1.0:
            # The penalty as vLLM and transformers apply it, whom the Prometheus papers' settings
            # (1.03) were given for: every token of the prompt and of the output so far, no window
            # (vLLM's _apply_penalties masks prompt | output). llama.cpp's own default looks at the
            # last 64 generated tokens only, so the prompt is fed in and the window spans it all.
            # llama.cpp allocates the window up front, so it is sized by what can be generated.
            window = len(history) + min(p.max_tokens, p.max_tokens if budget is None else budget) + 64
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(n_vocab, window, p.repeat_penalty,
                                                                              0.0, 0.0))
            for token in history:
                ll.llama_sampler_accept(chain, token)
        if p.temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(_seed(p.seed)))

    def sample(self, ctx: LlamaContext, index: int) -> int:
        return self._ll.llama_sampler_sample(self._chain, ctx.handle, index)

    def close(self) -> None:
        if getattr(self, "_chain", None) is not None:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None


RANDOM_SEED = 0xFFFFFFFF   # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed for it


def _seed(seed: int) -> int:
    """The 32-bit seed llama.cpp gets; never its "random" value, so a run stays reproducible
    whatever seed (or seed + sample index) it was given."""
    seed &= 0xFFFFFFFF
    return seed - 1 if seed == RANDOM_SEED else seed
