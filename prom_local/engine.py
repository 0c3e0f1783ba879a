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
from .offload import ModelShape, OffloadPlan, fewer_layers, free_gpu_memory, plan_offload

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

class _Slot:
    """One sequence of the context: what its KV cache holds and where its request stands."""

    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.cached: list[int] = []      # tokens whose KV is in this sequence, positions 0..n-1
        self.req: GenRequest | None = None
        self.pending: list[int] = []     # tokens to feed before the next logits
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

    @property
    def busy(self) -> bool:
        return self.req is not None


@dataclass
class EngineConfig:
    n_ctx: int | None = None             # per sequence; None = min(8192, trained context)
    gpu_layers: int | None = None        # None = auto, -1 = all, 0 = CPU, N = N layers
    n_threads: int | None = None
    n_parallel: int = 1
    n_batch: int = 512
    verbose: bool = False


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
        self.plan = self._plan(probe)
        self._say(self.plan.reason)
        self.model, self.plan = self._load_with_retry(path, self.plan)
        probe.close()
        self.n_parallel = max(1, self.config.n_parallel)
        self.ctx = self._make_context()
        self._mem = _ll.llama_get_memory(self.ctx)
        self.slots = [_Slot(i) for i in range(self.n_parallel)]
        self.n_batch = max(self.config.n_batch, self.n_parallel)
        self._batch = _ll.llama_batch_init(self.n_batch, 0, 1)
        self._lock = threading.Lock()

    # -- loading --------------------------------------------------------------------------------
    def _plan(self, probe: LlamaModel) -> OffloadPlan:
        wanted = self.config.gpu_layers
        supported = gpu_offload_supported()
        if wanted is None:
            return plan_offload(probe.shape(), n_ctx=self.n_ctx * max(1, self.config.n_parallel),
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
        # One unified KV cache shared by all sequences: a copied prefix then shares cells instead of
        # duplicating them, so prefix reuse costs no memory.
        params.n_ctx = self.n_ctx * self.n_parallel
        params.n_seq_max = self.n_parallel
        params.kv_unified = True
        params.n_batch = max(self.config.n_batch, self.n_parallel)
        params.n_ubatch = min(params.n_batch, 512)
        threads = self.config.n_threads or len(os.sched_getaffinity(0))
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
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
            yield from self._generate(iter(requests))

    def _generate(self, queue: Iterator[GenRequest]):
        exhausted = False
        while True:
            # Refill free slots: a finished sequence's slot takes the next record at once.
            for slot in self.slots:
                while not slot.busy and not exhausted:
                    req = next(queue, None)
                    if req is None:
                        exhausted = True
                        break
                    try:
                        self.check_fits(len(req.tokens), req.params.max_tokens)
                    except ContextOverflow as exc:
                        yield ErrorEvent(req.tag, exc)
                        continue
                    self._assign(slot, req)
            active = [s for s in self.slots if s.busy]
            if not active:
                return
            for slot in active:  # cancellation is checked between steps, never mid-decode
                if slot.req.cancel is not None and slot.req.cancel.is_set():
                    slot.finish_reason = "cancelled"
                    yield DoneEvent(self._release(slot))
            active = [s for s in self.slots if s.busy]
            if not active:
                continue
            outputs = self._step(active)
            for slot, index in outputs:
                yield from self._after_logits(slot, index)

    def _assign(self, slot: _Slot, req: GenRequest) -> None:
        tokens = req.tokens
        # Longest prefix already in the cache: this slot's own, or another sequence's to copy.
        # At least one prompt token is always decoded, since its logits start generation.
        limit = len(tokens) - 1
        best_src, best_n = slot, _common_prefix(slot.cached, tokens, limit)
        for other in self.slots:
            if other is not slot:
                n = _common_prefix(other.cached, tokens, limit)
                if n > best_n:
                    best_src, best_n = other, n
        if best_src is slot:
            _ll.llama_memory_seq_rm(self._mem, slot.seq_id, best_n, -1)
        else:
            _ll.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            _ll.llama_memory_seq_cp(self._mem, best_src.seq_id, slot.seq_id, 0, best_n)
        slot.cached = list(tokens[:best_n])
        slot.req = req
        slot.pending = list(tokens[best_n:])
        slot.generated = []
        slot.text_bytes = bytearray()
        slot.text = ""
        slot.probes = []
        slot.forcing = False
        slot.appended = ""
        slot.finish_reason = ""
        slot.reused = best_n
        slot.started = time.perf_counter()
        slot.first_token = None
        slot.budget = max(0, min(req.params.max_tokens,
                                 self.n_ctx - len(tokens) - CONTINUATION_RESERVE))
        slot.sampler = self._make_sampler(req.params)

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

    def _step(self, active: list[_Slot]) -> list[tuple[_Slot, int]]:
        """Fill one batch from every active sequence and decode it; return who got logits where."""
        batch = self._batch
        n = 0
        wants: list[tuple[_Slot, int]] = []
        # Generating sequences first (one token each) so long prompts never starve them.
        order = sorted(active, key=lambda s: len(s.pending) > 1)
        for slot in order:
            take = min(len(slot.pending), self.n_batch - n)
            if take <= 0:
                continue
            pos0 = len(slot.cached)
            for j in range(take):
                batch.token[n] = slot.pending[j]
                batch.pos[n] = pos0 + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = 0
                n += 1
            slot.cached.extend(slot.pending[:take])
            del slot.pending[:take]
            if not slot.pending:
                batch.logits[n - 1] = 1
                wants.append((slot, n - 1))
        batch.n_tokens = n
        rc = _ll.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}" + (f": {_LOG.tail(3)}" if _LOG.tail() else ""))
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
            slot.forcing = True
            slot.appended = self.model.detokenize(extra)
            slot.pending = ([unfed] if unfed is not None else []) + list(extra)
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
        if slot.pending:  # tokens never decoded (cancelled mid-prompt) are not in the cache
            slot.pending = []
        _ll.llama_sampler_free(slot.sampler)
        slot.sampler = None
        slot.req = None
        return out

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


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    # numpy compares long prompts far faster than a Python loop.
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if diff.size else n
