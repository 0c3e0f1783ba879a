"""llama.cpp, and nothing above it: load a GGUF, tokenize, and decode many sequences together.

This is the only module (with convert/'s quantize step) that touches llama.cpp's low-level calls;
everything else sees token lists, strings and floats. The decoding loop keeps up to `n_parallel`
requests in flight as separate sequences of one context, refilled continuously, and reuses any KV
prefix a new request shares with a sequence already in the cache (llama.cpp's sequence copy), so the
system prompt, and the instruction when several responses share it, is computed once.

Scores are not known here. A request carries generic hooks instead: token ids whose probabilities
to report when its text reaches a given state, and a callback that may append tokens when
generation ends (the forced-score continuation of grading.py).
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import ContextOverflow, ModelLoadError, ModelNotFound
from .offload import (ModelShape, OffloadPlan, available_memory, choose_parallel, fewer_layers,
                      free_gpu_memory, plan_offload)

try:  # Imported lazily by the CLI's `--help`; a missing binding is reported when a model is opened.
    import llama_cpp as _ll
except ImportError:  # pragma: no cover - exercised only on broken installs
    _ll = None

GGUF_MAGIC = b"GGUF"
# Room kept after the generated text for the forced-score continuation ("\n  [RESULT] N").
CONTINUATION_RESERVE = 16


# ----------------------------------------------------------------------------------------------
# llama.cpp's log: keep it quiet unless asked, but remember it so load failures can say why.

class _LlamaLog:
    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.verbose = False
        self._callback = None

    def install(self) -> None:
        if self._callback is not None or _ll is None:
            return

        @_ll.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            message = text.decode("utf-8", "replace")
            self.lines.append(message)
            if self.verbose:
                os.write(2, text)

        self._callback = callback  # a reference must outlive the C side's use of it
        _ll.llama_log_set(callback, ctypes.c_void_p(0))

    def tail(self, n: int = 8) -> str:
        return "".join(list(self.lines)[-n:]).strip()


_LOG = _LlamaLog()
_BACKEND_READY = False


def _require_llama() -> None:
    global _BACKEND_READY
    if _ll is None:
        raise ModelLoadError("llama-cpp-python is not installed: pip install llama-cpp-python")
    if not _BACKEND_READY:
        _LOG.install()
        _ll.llama_backend_init()
        _BACKEND_READY = True


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU (CUDA, Metal, Vulkan...)."""
    _require_llama()
    return bool(_ll.llama_supports_gpu_offload())


# Names llama.cpp's system info uses for GPU backends, in the order we report them.
_GPU_BACKENDS = ("CUDA", "ROCm", "HIP", "Metal", "Vulkan", "SYCL", "MUSA", "CANN", "OpenCL", "Kompute")


def build_backend() -> str:
    """Which backend this llama.cpp build was compiled with: "CUDA", "Metal", ... or "CPU".

    The build, not what a model uses: a CUDA build running with --gpu-layers 0 still says CUDA.
    """
    _require_llama()
    info = _ll.llama_print_system_info().decode("utf-8", "replace")
    for name in _GPU_BACKENDS:
        if f"{name} :" in info or f"{name}:" in info:
            return name
    return "GPU" if gpu_offload_supported() else "CPU"


def check_gguf_file(path: Path) -> None:
    """Fail early, with the path, for the mistakes llama.cpp would only report as 'failed to load'."""
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file")
    if path.is_dir():
        raise ModelNotFound(f"{path}: is a directory, expected a .gguf file")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


# ----------------------------------------------------------------------------------------------
# The model file: weights (or only the vocabulary), metadata, tokenizer.

class LlamaModel:
    """A loaded GGUF. `vocab_only=True` reads the tokenizer and metadata without the weights."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = 0, vocab_only: bool = False,
                 verbose: bool = False):
        _require_llama()
        self.path = Path(path)
        check_gguf_file(self.path)
        _LOG.verbose = verbose
        params = _ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        _LOG.lines.clear()
        self._model = _ll.llama_model_load_from_file(str(self.path).encode(), params)
        if not self._model:
            raise ModelLoadError(f"{self.path}: llama.cpp could not load this GGUF"
                                 + (f"\n{_LOG.tail()}" if _LOG.tail() else ""))
        self.n_gpu_layers = n_gpu_layers
        self.vocab_only = vocab_only
        self._vocab = _ll.llama_model_get_vocab(self._model)
        self.n_vocab = _ll.llama_vocab_n_tokens(self._vocab)
        self.metadata = self._read_metadata()
        self._piece_cache: dict[int, bytes] = {}

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(_ll.llama_model_meta_count(self._model)):
            n = _ll.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value.decode("utf-8", "replace") if n >= 0 else f"#{i}"
            n = _ll.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= len(buf):  # long values (chat templates) need a bigger buffer
                big = ctypes.create_string_buffer(n + 1)
                _ll.llama_model_meta_val_str_by_index(self._model, i, big, len(big))
                out[key] = big.value.decode("utf-8", "replace")
            else:
                out[key] = buf.value.decode("utf-8", "replace") if n >= 0 else ""
        return out

    # -- shape --------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "?")

    def _meta_int(self, suffix: str, default: int = 0) -> int:
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        try:
            return int(value) if value is not None else default
        except ValueError:
            return default

    @property
    def n_layer(self) -> int:
        return self._meta_int("block_count")

    @property
    def n_ctx_train(self) -> int:
        return self._meta_int("context_length", 4096)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template") or None

    def shape(self) -> ModelShape:
        n_head = self._meta_int("attention.head_count", 1)
        return ModelShape(
            file_bytes=self.path.stat().st_size, n_layer=self.n_layer,
            n_embd=self._meta_int("embedding_length"), n_head=n_head,
            n_head_kv=self._meta_int("attention.head_count_kv", n_head),
            n_ff=self._meta_int("feed_forward_length"), n_vocab=self.n_vocab)

    # -- tokenizer ----------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        """Tokens of text. `special=True` turns written special tokens (<|eot_id|>) into their ids,
        which is what a rendered chat prompt needs; record text never reaches here unrendered."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            arr = (_ll.llama_token * capacity)()
            n = _ll.llama_tokenize(self._vocab, data, len(data), arr, capacity, add_bos, special)
            if n >= 0:
                return list(arr[:n])
            capacity = -n

    def token_bytes(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = _ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = _ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            piece = buf.raw[:n]
            self._piece_cache[token] = piece
        return piece

    def detokenize(self, tokens: Iterable[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(_ll.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        if getattr(self, "_model", None):
            _ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass


def read_model_info(path: str | Path) -> LlamaModel:
    """Metadata and tokenizer without the weights (fast, no GPU memory)."""
    return LlamaModel(path, vocab_only=True)


# ----------------------------------------------------------------------------------------------
# Requests and results.

@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy, deterministic
    top_p: float = 1.0
    top_k: int = 0
    repeat_penalty: float = 1.0
    seed: int = 0
    max_tokens: int = 512


@dataclass
class GenRequest:
    tokens: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    tag: object = None
    # Report P(token) for these ids at every step where probe_when(text so far) is true...
    probe_ids: Sequence[int] = ()
    probe_when: Callable[[str], bool] | None = None
    # ...and when generation ends, on_finish(text) may return tokens to append; the probabilities
    # of probe_ids after them are reported as `final_probe`.
    on_finish: Callable[[str], list[int] | None] | None = None
    cancel: threading.Event | None = None


@dataclass
class GenOutput:
    tag: object
    text: str
    tokens: list[int]
    finish_reason: str                    # stop | length | cancelled
    prompt_tokens: int
    reused_prompt_tokens: int
    probes: list[tuple[int, np.ndarray, float]]   # (char offset, P(probe_ids), time)
    appended: str = ""                    # text of the tokens on_finish appended
    final_probe: np.ndarray | None = None
    seconds: float = 0.0
    first_token_seconds: float | None = None


@dataclass
class TokenEvent:
    tag: object
    text: str


@dataclass
class DoneEvent:
    output: GenOutput


@dataclass
class ErrorEvent:
    tag: object
    error: Exception


# ----------------------------------------------------------------------------------------------
# The engine.
#
# Scheduling, in one paragraph: when a slot is free, requests are read a few at a time into a
# look-ahead window (input order). A free slot takes the window's request that shares the longest
# prefix with what is cached or being computed, unless the oldest request has been passed over
# n_parallel times (so output, which the judge writes in input order, is never held back long).
# A new request first *waits* while an older one is still computing a prefix they share, then
# copies that KV instead of computing the same tokens in parallel. Each round decodes one token of
# every generating sequence together, and a chunk of the oldest unfinished prompt.

IDLE, WAITING, RUNNING = "idle", "waiting", "running"
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
EXACT_TAIL = 8


class _Job:
    """A request inside the engine: its tokens as an array (prefix matching runs on every admission)."""

    __slots__ = ("req", "arr", "index")

    def __init__(self, req: GenRequest, index: int):
        self.req = req
        self.arr = np.asarray(req.tokens, dtype=np.int64)
        self.index = index


class _Slot:
    """One sequence of the context: what its KV cache holds and where its request stands."""

    def __init__(self, seq_id: int, capacity: int):
        self.seq_id = seq_id
        self.buf = np.zeros(capacity, dtype=np.int64)  # tokens whose KV is in this sequence...
        self.n = 0                                        # ...at positions 0..n-1
        self.state = IDLE
        self.job: _Job | None = None
        self.admitted = 0                # admission number: older requests get the prefill budget first
        self.last_used = 0
        self.pending: list[int] = []     # tokens to feed before the next logits
        self.prefilling = False          # pending is (part of) the prompt or a forced continuation
        self.generated: list[int] = []
        self.text_bytes = bytearray()
        self.text = ""
        self.probes: list[tuple[int, np.ndarray, float]] = []
        self.sampler = None
        self.forcing = False
        self.appended = ""
        self.finish_reason = ""
        self.reused = 0
        self.started = 0.0
        self.first_token: float | None = None
        self.budget = 0                  # max tokens this sequence may generate
        self.counted_wait = False

    @property
    def busy(self) -> bool:
        return self.state != IDLE

    @property
    def req(self) -> GenRequest | None:
        return self.job.req if self.job is not None else None

    @property
    def cached(self) -> list[int]:
        return self.buf[:self.n].tolist()

    def shared(self, arr: np.ndarray, limit: int) -> int:
        """Tokens of `arr` (up to limit) whose KV this sequence holds right now."""
        return _common_prefix(self.buf[:self.n], arr, limit)

    def will_share(self, arr: np.ndarray, limit: int) -> int:
        """Tokens of `arr` whose KV this sequence holds or is about to compute (its prompt)."""
        if self.job is None:
            return self.shared(arr, limit)
        return max(self.shared(arr, limit), _common_prefix(self.job.arr, arr, limit))


@dataclass
class EngineConfig:
    n_ctx: int | None = None             # per sequence; None = min(8192, trained context)
    gpu_layers: int | None = None        # None = auto, -1 = all, 0 = CPU, N = N layers
    n_threads: int | None = None
    n_parallel: int | None = 1           # sequences in flight; None = choose from memory (auto)
    n_batch: int = 512
    verbose: bool = False
    # Requests read ahead of the free slots, to start those that share a cached prefix first.
    # None = 4 x n_parallel; 1 = strictly in input order (always so with n_parallel 1).
    lookahead: int | None = None
    # llama.cpp's flash attention. None = off on CPU (see _make_context), llama.cpp's own choice
    # (on) with GPU layers.
    flash_attn: bool | None = None
    # Put prompt chunks in the same batch as generated tokens. None = on a GPU only (see _round).
    mix_prompts: bool | None = None


@dataclass
class EngineStats:
    steps: int = 0
    batch_tokens: int = 0        # tokens decoded, prompt and generated
    prompt_tokens: int = 0       # prompt tokens of finished requests
    reused_tokens: int = 0       # of which taken from the KV cache instead of computed
    waits: int = 0               # requests that waited for another sequence's prefix


class Engine:
    def __init__(self, model_path: str | Path, config: EngineConfig | None = None,
                 on_status: Callable[[str], None] | None = None):
        _require_llama()
        self.config = config or EngineConfig()
        self._say = on_status or (lambda message: None)
        path = Path(model_path)
        check_gguf_file(path)
        probe = LlamaModel(path, vocab_only=True)
        self.n_ctx = self.config.n_ctx or min(8192, probe.n_ctx_train)
        self.n_parallel = self._choose_parallel(probe)
        self.plan = self._plan(probe)
        self._say(self.plan.reason)
        self.model, self.plan = self._load_with_retry(path, self.plan)
        probe.close()
        self.ctx = self._make_context()
        self._mem = _ll.llama_get_memory(self.ctx)
        self.slots = [_Slot(i, self.n_ctx) for i in range(self.n_parallel)]
        self.n_batch = max(self.config.n_batch, self.n_parallel)
        self._batch = _ll.llama_batch_init(self.n_batch, 0, 1)
        self._lock = threading.Lock()
        ahead = self.config.lookahead
        self.lookahead = 1 if self.n_parallel == 1 else max(1, ahead if ahead is not None else 4 * self.n_parallel)
        self.stats = EngineStats()
        self._admissions = 0
        mix = self.config.mix_prompts
        self.mix_prompts = self.plan.n_gpu_layers != 0 if mix is None else bool(mix)

    # -- loading --------------------------------------------------------------------------------
    def _choose_parallel(self, probe: LlamaModel) -> int:
        if self.config.n_parallel is not None:
            return max(1, int(self.config.n_parallel))
        on_gpu = self.config.gpu_layers != 0 and gpu_offload_supported()
        free = free_gpu_memory() if on_gpu else None
        if on_gpu and free is None:
            on_gpu = False  # plan_offload will run on CPU too
        n, reason = choose_parallel(probe.shape(), n_ctx=self.n_ctx, gpu=on_gpu,
                                    free_bytes=free if on_gpu else available_memory())
        self._say(reason)
        return n

    def _plan(self, probe: LlamaModel) -> OffloadPlan:
        wanted = self.config.gpu_layers
        supported = gpu_offload_supported()
        if wanted is None:
            return plan_offload(probe.shape(), n_ctx=self.n_ctx * self.n_parallel,
                                free_bytes=free_gpu_memory() if supported else None,
                                gpu_supported=supported)
        if wanted == 0:
            return OffloadPlan(0, 0, probe.n_layer, "--gpu-layers 0: running on CPU")
        if not supported:
            return OffloadPlan(0, 0, probe.n_layer,
                               f"--gpu-layers {wanted} asked, but this llama.cpp build has no GPU "
                               "offload: running on CPU (reinstall with CMAKE_ARGS=\"-DGGML_CUDA=on\")")
        on_gpu = probe.n_layer if wanted < 0 else min(wanted, probe.n_layer)
        return OffloadPlan(wanted, on_gpu, probe.n_layer, f"{on_gpu} of {probe.n_layer} layers on the GPU")

    def _load_with_retry(self, path: Path, plan: OffloadPlan) -> tuple[LlamaModel, OffloadPlan]:
        while True:
            try:
                return LlamaModel(path, n_gpu_layers=plan.n_gpu_layers,
                                  verbose=self.config.verbose), plan
            except ModelLoadError:
                if plan.n_gpu_layers == 0:
                    raise
                fewer = fewer_layers(plan.n_gpu_layers, plan.n_layer)
                self._say(f"loading with {plan.layers_on_gpu} GPU layers failed (out of GPU memory?); "
                          f"retrying with {fewer}")
                plan = OffloadPlan(fewer, fewer, plan.n_layer, f"{fewer} of {plan.n_layer} layers on the GPU "
                                   "after a failed load")

    def _make_context(self):
        params = _ll.llama_context_default_params()
        # One KV stream per sequence (not llama.cpp's unified cache): attention then reads only a
        # sequence's own cells. With a unified cache every token's attention also walks the other
        # sequences' cells, which on CPU made prompts ~30% and generated tokens ~70% slower at
        # 4 x 1,300 tokens; it also made results depend on where other sequences' cells lie.
        # Sharing a prefix is then a copy of the source stream (llama.cpp copies whole streams,
        # a memcpy far cheaper than recomputing the prefix), trimmed to the shared part.
        # Each sequence is kept within n_ctx tokens, so no stream can fill up.
        params.n_ctx = self.n_ctx * self.n_parallel
        params.n_seq_max = self.n_parallel
        params.kv_unified = False
        params.n_batch = max(self.config.n_batch, self.n_parallel)
        params.n_ubatch = min(params.n_batch, 512)
        threads = self.config.n_threads or len(os.sched_getaffinity(0))
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        flash = self.config.flash_attn
        if flash is None and self.plan.n_gpu_layers == 0:
            # On CPU, flash attention makes a token's result depend on how its prompt was cut into
            # batches (logits moved by up to ~0.5 on SmolLM2 when a reused prefix ends elsewhere),
            # so outputs would depend on what happened to be cached and on --parallel. Without it,
            # a prefix taken from the cache gives exactly the cold result, and speed is the same
            # (faster generation, slightly slower prompts). It is also llama-cpp-python's default.
            flash = False
        if flash is not None:
            params.flash_attn_type = (_ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                                      else _ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        ctx = _ll.llama_init_from_model(self.model._model, params)
        if not ctx:
            raise ModelLoadError(f"{self.model.path}: could not create a llama.cpp context of "
                                 f"{params.n_ctx} tokens" + (f"\n{_LOG.tail()}" if _LOG.tail() else ""))
        return ctx

    # -- info -----------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return "cpu" if self.plan.n_gpu_layers == 0 else "gpu"

    def describe(self) -> dict:
        return {"model": str(self.model.path), "n_ctx": self.n_ctx, "n_parallel": self.n_parallel,
                "gpu_layers": self.plan.layers_on_gpu, "n_layer": self.plan.n_layer,
                "backend": self.backend, "offload": self.plan.reason}

    # -- generation -----------------------------------------------------------------------------
    def check_fits(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt + CONTINUATION_RESERVE + 1 > self.n_ctx:
            raise ContextOverflow(n_prompt, self.n_ctx, max_tokens)

    def generate(self, requests: Iterable[GenRequest]) -> Iterator[TokenEvent | DoneEvent | ErrorEvent]:
        """Run requests, up to n_parallel at once; yield token deltas and results as they come.

        Results come in completion order (tagged); callers that need input order reorder them.
        A request that cannot run (prompt too long) yields an ErrorEvent and the rest go on.
        """
        with self._lock:
            try:
                yield from self._generate(iter(requests))
            finally:
                # An abandoned generator (caller stopped early, or an exception) leaves no request in
                # a slot; the KV cache stays and is reused by the next call.
                for slot in self.slots:
                    if slot.busy:
                        self._release(slot)

    def _generate(self, source: Iterator[GenRequest]):
        window: collections.deque[_Job] = collections.deque()
        exhausted = False
        arrivals = 0
        skips = 0  # times the oldest waiting request was passed over
        while True:
            # Read ahead only when a slot is free: a source that blocks for its next item (a queue
            # fed by a remote driver) then stalls nobody who could be decoding.
            free = any(not s.busy for s in self.slots)
            while free and not exhausted and len(window) < self.lookahead:
                req = next(source, None)
                if req is None:
                    exhausted = True
                    break
                try:
                    self.check_fits(len(req.tokens), req.params.max_tokens)
                except ContextOverflow as exc:
                    yield ErrorEvent(req.tag, exc)
                    continue
                window.append(_Job(req, arrivals))
                arrivals += 1

            # Cancellation is checked between steps, never mid-decode.
            for job in [j for j in window if _cancelled(j.req)]:
                window.remove(job)
                yield DoneEvent(self._unstarted_output(job.req))
            for slot in self.slots:
                if slot.busy and _cancelled(slot.req):
                    slot.finish_reason = "cancelled"
                    yield DoneEvent(self._release(slot))

            while window and any(not s.busy for s in self.slots):
                if skips >= self.n_parallel:
                    job = window.popleft()
                else:
                    job = self._pick(window)
                    window.remove(job)
                skips = 0 if job.index == min([job.index] + [j.index for j in window]) else skips + 1
                self._admit(self._choose_slot(job, window), job)

            for slot in sorted((s for s in self.slots if s.state == WAITING), key=lambda s: s.admitted):
                self._start(slot)

            runnable = [s for s in self.slots if s.state == RUNNING and s.pending]
            if not runnable:
                if not any(s.busy for s in self.slots) and not window and exhausted:
                    return
                waiting = [s for s in self.slots if s.state == WAITING]
                if waiting:  # unreachable by construction (the oldest never waits); never hang
                    self._start(min(waiting, key=lambda s: s.admitted), force=True)
                continue
            yield from self._round(runnable)

    def _round(self, runnable: list[_Slot]):
        """One round of decoding: a token for every generating sequence, and prompt chunks (oldest
        request first, so a prefix others wait for is ready soonest)."""
        generating = [(s, 1) for s in runnable if not s.prefilling]
        prompts = sorted((s for s in runnable if s.prefilling), key=lambda s: s.admitted)
        if self.mix_prompts:
            # One batch for all. llama.cpp still splits it into micro-batches of equal tokens per
            # sequence, but a prompt's first token then fills its gap in the generating range,
            # which on a GPU saves a pass over the weights per round.
            items, room = generating, self.n_batch - len(generating)
            for slot in prompts:
                take = min(len(slot.pending), room)
                if take <= 0:
                    break
                items.append((slot, take))
                room -= take
            for slot, index in self._decode(items):
                yield from self._after_logits(slot, index)
            return
        # Apart: generating tokens together, then one chunk of one prompt on its own. On a CPU this
        # costs nothing (llama.cpp would split a mixed batch into the same pieces), and each prompt
        # is cut where --parallel 1 cuts it (n_batch tokens from the reused prefix on), which
        # keeps the arithmetic, and so the outputs, the same as --parallel 1's.
        if generating:
            for slot, index in self._decode(generating):
                yield from self._after_logits(slot, index)
        # (again: a sequence that just ended may now have a forced continuation to feed)
        prompts = [s for s in self.slots if s.state == RUNNING and s.prefilling and s.pending]
        if prompts:
            slot = min(prompts, key=lambda s: s.admitted)
            take = min(len(slot.pending), self.n_batch)
            if 0 < len(slot.pending) - take < EXACT_TAIL and take - EXACT_TAIL >= EXACT_TAIL:
                take -= EXACT_TAIL   # never leave a last chunk narrower than EXACT_TAIL
            for slot, index in self._decode([(slot, take)]):
                yield from self._after_logits(slot, index)

    # -- scheduling -----------------------------------------------------------------------------
    def _pick(self, window: collections.deque[_Job]) -> _Job:
        """The request whose prompt shares the most with what is cached or being computed."""
        busy = [s for s in self.slots if s.busy or s.n]
        best, best_n = window[0], -1
        for job in window:
            limit = len(job.arr) - 1
            n = max((s.will_share(job.arr, limit) for s in busy), default=0)
            if n > best_n:  # ties: the oldest
                best, best_n = job, n
        return best

    def _choose_slot(self, job: _Job, window: Iterable[_Job]) -> _Slot:
        """A free slot for job: its own cache if that is the best match, else the free slot whose
        cache the coming requests need least (so shared prefixes outlive the records that made them)."""
        free = [s for s in self.slots if not s.busy]
        limit = len(job.arr) - 1
        own = max(free, key=lambda s: (s.shared(job.arr, limit), -s.last_used))
        best_anywhere = max(s.shared(job.arr, limit) for s in self.slots)
        if own.n and own.shared(job.arr, limit) == best_anywhere and best_anywhere > 0:
            return own
        others = [j for j in window if j is not job]

        def usefulness(slot: _Slot) -> tuple[int, int]:
            need = max((slot.shared(j.arr, len(j.arr) - 1) for j in others), default=0)
            return need, slot.last_used

        return min(free, key=usefulness)

    def _admit(self, slot: _Slot, job: _Job) -> None:
        req = job.req
        self._admissions += 1
        slot.job = job
        slot.state = WAITING
        slot.admitted = self._admissions
        slot.last_used = self._admissions
        slot.pending = []
        slot.prefilling = True
        slot.generated = []
        slot.text_bytes = bytearray()
        slot.text = ""
        slot.probes = []
        slot.forcing = False
        slot.appended = ""
        slot.finish_reason = ""
        slot.reused = 0
        slot.started = time.perf_counter()
        slot.first_token = None
        slot.budget = max(0, min(req.params.max_tokens,
                                 self.n_ctx - len(req.tokens) - CONTINUATION_RESERVE))
        slot.sampler = self._make_sampler(req.params)

    def _start(self, slot: _Slot, force: bool = False) -> None:
        """Give a waiting request its KV prefix and start its prompt, or let it wait for a prefix
        that an older request is computing right now."""
        arr = slot.job.arr
        limit = max(0, len(arr) - EXACT_TAIL)
        # Another sequence may share a longer prefix; this slot's own cache wins ties (no copy).
        src, have = slot, slot.shared(arr, limit)
        for other in self.slots:
            if other is not slot:
                n = other.shared(arr, limit)
                if n > have:
                    src, have = other, n
        if not force:
            coming = max((o.will_share(arr, limit) for o in self.slots
                          if o.busy and o is not slot and o.admitted < slot.admitted), default=0)
            if coming >= have + MIN_WAIT_GAIN:
                if not slot.counted_wait:
                    self.stats.waits += 1
                    slot.counted_wait = True
                return
        slot.counted_wait = False
        if src is not slot:
            # Whole-stream copy (the only kind llama.cpp does across streams; the data moves at the
            # start of the next decode, before that batch writes anything), then trim below.
            _ll.llama_memory_seq_cp(self._mem, src.seq_id, slot.seq_id, -1, -1)
            slot.buf[:src.n] = src.buf[:src.n]
            slot.n = src.n
        _ll.llama_memory_seq_rm(self._mem, slot.seq_id, have, -1)
        slot.n = have
        slot.reused = have
        slot.pending = list(slot.job.req.tokens[have:])
        slot.state = RUNNING

    def _make_sampler(self, p: SamplingParams):
        chain = _ll.llama_sampler_chain_init(_ll.llama_sampler_chain_default_params())
        if p.repeat_penalty != 1.0:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_penalties(
                self.model.n_vocab, 64, p.repeat_penalty, 0.0, 0.0))
        if p.temperature <= 0:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_top_p(p.top_p, 1))
        _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_temp(p.temperature))
        _ll.llama_sampler_chain_add(chain, _ll.llama_sampler_init_dist(p.seed & 0xFFFFFFFF))
        return chain

    # -- decoding -------------------------------------------------------------------------------
    def _decode(self, items: list[tuple[_Slot, int]]) -> list[tuple[_Slot, int]]:
        """Decode the next `take` pending tokens of each (slot, take); return who got logits where."""
        batch = self._batch
        n = 0
        wants: list[tuple[_Slot, int]] = []
        # By sequence id: llama.cpp cuts a batch over several KV streams into micro-batches of
        # consecutive sequence ids, so any other order costs extra passes over the weights.
        items = sorted(items, key=lambda item: item[0].seq_id)
        for slot, take in items:
            pos0 = slot.n
            for j in range(take):
                batch.token[n] = slot.pending[j]
                batch.pos[n] = pos0 + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = 0
                n += 1
            if take == len(slot.pending):
                batch.logits[n - 1] = 1
                wants.append((slot, n - 1))
        batch.n_tokens = n
        rc = _ll.llama_decode(self.ctx, batch)
        if rc != 0:
            # 1 = no room in the KV cache: impossible while every sequence stays within n_ctx, so
            # this is a bug; llama.cpp has restored the cache, and our bookkeeping was not advanced.
            raise RuntimeError(f"llama_decode failed with code {rc} on a batch of {n} tokens from "
                               f"{len(items)} sequences" + (f": {_LOG.tail(3)}" if _LOG.tail() else ""))
        for slot, take in items:
            slot.buf[slot.n:slot.n + take] = slot.pending[:take]
            slot.n += take
            del slot.pending[:take]
        self.stats.steps += 1
        self.stats.batch_tokens += n
        return wants

    def _logits(self, index: int) -> np.ndarray:
        ptr = _ll.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def _probe(self, slot: _Slot, index: int) -> np.ndarray:
        logits = self._logits(index).astype(np.float64)
        top = logits.max()
        log_z = top + np.log(np.exp(logits - top).sum())
        return np.exp(logits[np.asarray(slot.req.probe_ids, dtype=np.int64)] - log_z)

    def _after_logits(self, slot: _Slot, index: int):
        req = slot.req
        slot.prefilling = False
        if slot.forcing:
            final = self._probe(slot, index) if req.probe_ids else None
            yield DoneEvent(self._release(slot, final))
            return
        if req.probe_ids and req.probe_when is not None and req.probe_when(slot.text):
            slot.probes.append((len(slot.text), self._probe(slot, index), time.perf_counter()))
        if slot.budget <= 0:
            yield from self._finish(slot, "length", unfed=None)
            return
        token = _ll.llama_sampler_sample(slot.sampler, self.ctx, index)
        if slot.first_token is None:
            slot.first_token = time.perf_counter() - slot.started
        if self.model.is_eog(token):
            yield from self._finish(slot, "stop", unfed=None)
            return
        slot.generated.append(token)
        slot.text_bytes += self.model.token_bytes(token)
        # Incomplete UTF-8 at the end (a Korean syllable split over tokens) waits for the next piece.
        text = slot.text_bytes.decode("utf-8", "ignore")
        delta, slot.text = text[len(slot.text):], text
        if delta:
            yield TokenEvent(req.tag, delta)
        if len(slot.generated) >= slot.budget:
            yield from self._finish(slot, "length", unfed=token)
            return
        slot.pending = [token]

    def _finish(self, slot: _Slot, reason: str, unfed: int | None):
        slot.finish_reason = reason
        extra = slot.req.on_finish(slot.text) if slot.req.on_finish else None
        if extra:
            pending = ([unfed] if unfed is not None else []) + list(extra)
            if slot.n + len(pending) <= self.n_ctx:  # always, with continuations up to the reserve
                slot.forcing = True
                slot.prefilling = True
                slot.appended = self.model.detokenize(extra)
                slot.pending = pending
                return
        yield DoneEvent(self._release(slot))

    def _release(self, slot: _Slot, final: np.ndarray | None = None) -> GenOutput:
        req = slot.req
        out = GenOutput(
            # slot.text (not a fresh decode) so probe offsets index the same string; a character cut
            # in half by max_tokens is dropped rather than shown as U+FFFD.
            tag=req.tag, text=slot.text, tokens=list(slot.generated),
            finish_reason=slot.finish_reason or "stop", prompt_tokens=len(req.tokens),
            reused_prompt_tokens=slot.reused, probes=slot.probes, appended=slot.appended,
            final_probe=final, seconds=time.perf_counter() - slot.started,
            first_token_seconds=slot.first_token)
        self.stats.prompt_tokens += len(req.tokens)
        self.stats.reused_tokens += slot.reused
        # Tokens never decoded (cancelled mid-prompt) are not in the cache; what was decoded stays
        # there (slot.buf[:n]) for the next request to reuse.
        slot.pending = []
        slot.prefilling = False
        if slot.sampler is not None:
            _ll.llama_sampler_free(slot.sampler)
        slot.sampler = None
        slot.job = None
        slot.state = IDLE
        slot.counted_wait = False
        return out

    def _unstarted_output(self, req: GenRequest) -> GenOutput:
        return GenOutput(tag=req.tag, text="", tokens=[], finish_reason="cancelled",
                         prompt_tokens=len(req.tokens), reused_prompt_tokens=0, probes=[])

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            _ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            _ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None) is not None:
            self.model.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cancelled(req: GenRequest) -> bool:
    return req.cancel is not None and req.cancel.is_set()


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    # numpy compares long prompts far faster than a Python loop.
    if n <= 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n
