"""How many layers to put on the GPU, how many sequences to keep in flight and which type the KV
cache holds: arithmetic over the model's shape and free memory, plus the reading of free RAM
(/proc/meminfo; the GPU's comes from devices.free_gpu_memory) and the --gpu-layers spelling.

`auto_plan` is the one planner: the engine (engine/loading.py) calls it with the machine's figures,
`doctor` with the same or with what-if figures, so both say the same thing.

Kept free of llama.cpp calls so that the decisions can be unit-tested with given memory figures;
engine/loading.py feeds them real numbers and retries with fewer layers if llama.cpp still runs out.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..units import format_bytes

MiB = 1024 * 1024
# llama.cpp allocates compute buffers and CUDA needs its own context beyond weights and KV cache.
DEFAULT_RESERVE_BYTES = 768 * MiB


# KV cache types (llama.cpp's -ctk/-ctv names): (values per block, bytes per block). q8_0 keeps a
# 2-byte scale per 32 values, q4_0 the same scale and 4 bits a value.
KV_TYPES = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}
CACHE_TYPE_CHOICES = (*KV_TYPES, "auto")
# The quantized types whose effect on scores was measured small (benchmarks/kv_fidelity.py; the
# docs/performance.md's "KV cache types" table): the only ones `auto` may choose, and only where they fit more.
KV_MEASURED_SMALL = ("q8_0",)


def parse_cache_type(value: str | None) -> str | None:
    """--cache-type-k/-v spelling -> a KV_TYPES name, or None for auto."""
    text = (value or "auto").strip().lower()
    if text == "auto":
        return None
    if text not in KV_TYPES:
        raise ValueError(f"the KV cache type must be one of {', '.join(CACHE_TYPE_CHOICES)}, not {value!r}")
    return text


@dataclass(frozen=True)
class KVTypes:
    """The types K and V are cached in."""

    k: str = "f16"
    v: str = "f16"

    def row_bytes(self, n_values: int) -> int:
        """Bytes of one token's K and V rows of n_values each."""
        return sum(-(-n_values // per) * size for per, size in (KV_TYPES[self.k], KV_TYPES[self.v]))

    @property
    def needs_flash_attn(self) -> bool:
        # llama.cpp computes attention over a quantized V only in its flash-attention kernel.
        return self.v != "f16"

    @property
    def label(self) -> str:
        return self.k if self.k == self.v else f"K {self.k}, V {self.v}"


F16 = KVTypes()


human_bytes = format_bytes   # the planner's name for it


@dataclass(frozen=True)
class ModelShape:
    file_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int

    def _layer_params(self) -> int:
        kv = self.n_embd * self.n_head_kv // max(self.n_head, 1)
        return 2 * self.n_embd * self.n_embd + 2 * self.n_embd * kv + 3 * self.n_embd * self.n_ff

    def _non_layer_params(self) -> int:
        # Token embeddings and output head: Llama 3 has both. A model that ties them (SmolLM2) stores
        # one, so its layer_bytes comes out low; engine/loading.py's out-of-memory retry with fewer layers
        # covers a plan that was too hopeful.
        return 2 * self.n_vocab * self.n_embd

    @property
    def layer_bytes(self) -> int:
        """Weight bytes of one repeating layer, assuming the quantization spreads evenly over params."""
        total = self._non_layer_params() + self.n_layer * self._layer_params()
        return int(self.file_bytes * self._layer_params() / total)

    @property
    def output_bytes(self) -> int:
        """The output head (llama.cpp offloads it as the 'extra' layer when all layers fit)."""
        total = self._non_layer_params() + self.n_layer * self._layer_params()
        return int(self.file_bytes * self.n_vocab * self.n_embd / total)

    def kv_bytes_per_layer(self, n_ctx: int, kv: KVTypes = F16) -> int:
        return n_ctx * kv.row_bytes(self.n_embd * self.n_head_kv // max(self.n_head, 1))

    def kv_bytes_per_token(self, kv: KVTypes = F16) -> int:
        return self.n_layer * self.kv_bytes_per_layer(1, kv)


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int          # the value for llama.cpp: 0 = CPU, -1 = everything
    layers_on_gpu: int         # repeating layers actually placed on the GPU
    n_layer: int
    reason: str

    @property
    def backend(self) -> str:
        return "cpu" if self.n_gpu_layers == 0 else "gpu"


def plan_offload(shape: ModelShape, *, n_ctx: int, free_bytes: int | None, gpu_supported: bool,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES, kv: KVTypes = F16) -> OffloadPlan:
    """Fit as many layers as free GPU memory allows, counting weights and each layer's KV cache."""
    if not gpu_supported:
        return OffloadPlan(0, 0, shape.n_layer, "this llama.cpp build has no GPU offload: running on CPU")
    if free_bytes is None:
        return OffloadPlan(0, 0, shape.n_layer, "GPU free memory unknown: running on CPU")
    budget = free_bytes - reserve_bytes
    per_layer = shape.layer_bytes + shape.kv_bytes_per_layer(n_ctx, kv)
    full = shape.n_layer * per_layer + shape.output_bytes
    gib = human_bytes
    if budget >= full:
        return OffloadPlan(-1, shape.n_layer, shape.n_layer,
                           f"all {shape.n_layer} layers fit on the GPU ({gib(full)} of {gib(free_bytes)} free)")
    layers = max(0, min(shape.n_layer, budget // per_layer)) if per_layer > 0 else 0
    if layers == 0:
        return OffloadPlan(0, 0, shape.n_layer,
                           f"not even one layer fits in {gib(free_bytes)} free GPU memory: running on CPU")
    if layers == shape.n_layer:
        return OffloadPlan(int(layers), int(layers), shape.n_layer,
                           f"all {shape.n_layer} layers fit on the GPU but not the output head "
                           f"({gib(shape.output_bytes)}), which runs on the CPU ({gib(free_bytes)} free, "
                           f"{gib(full)} needed for everything)")
    return OffloadPlan(int(layers), int(layers), shape.n_layer,
                       f"{layers} of {shape.n_layer} layers fit on the GPU ({gib(free_bytes)} free, "
                       f"{gib(per_layer)} per layer with KV cache)")


def parse_gpu_layers(value: str | int) -> int | None:
    """CLI spelling -> llama.cpp value: 'auto' -> None (decide), 'all' -> -1, '0' -> CPU, 'N' -> N."""
    if isinstance(value, int):
        return value
    text = value.strip().lower()
    if text == "auto":
        return None
    if text in ("all", "-1"):
        return -1
    if text.isdigit():
        return int(text)
    raise ValueError(f"--gpu-layers must be auto, all or a number of layers, not {value!r}")


def fewer_layers(current: int, n_layer: int) -> int:
    """The next try after an out-of-memory load: drop a quarter of the layers (at least one)."""
    on_gpu = n_layer if current < 0 else current
    return max(0, on_gpu - max(1, on_gpu // 4))


def retry_layers(n_gpu_layers: int, n_layer: int) -> list[int]:
    """Every n_gpu_layers the engine tries after a load at `n_gpu_layers` runs out of memory, down
    to the CPU (0): the retry sequence, spelled out for the start-up line and for tests."""
    tries, current = [], n_gpu_layers
    while current != 0:
        current = fewer_layers(current, n_layer)
        tries.append(current)
    return tries


# The per-sequence context is rounded up to this many tokens (llama.cpp pads KV cells to 256 anyway),
# so a handful of extra prompt tokens does not change the plan.
CTX_STEP = 256
# Without --ctx, no sequence gets more than this, even when the model was trained on more.
DEFAULT_CTX_CAP = 8192


def context_size(need_tokens: int | None, *, ctx: int | None, trained: int, reserve: int) -> tuple[int, str]:
    """(tokens of KV cache per sequence, why): sized to the work when its need is known.

    `need_tokens` is the longest prompt of the work plus the new tokens it may generate; `reserve`
    is the room the engine keeps after them (the forced-score continuation). Unknown need (stdin,
    library callers that do not say) keeps min(8192, trained). --ctx, or else
    the trained context, caps it; records that need more become error rows with their size.
    """
    cap = ctx or trained
    cap_why = f"--ctx {ctx:,}" if ctx else f"the model's trained context {trained:,}"
    if need_tokens is None:
        n = ctx or min(DEFAULT_CTX_CAP, trained)
        return n, f"context {n:,} tokens per sequence ({'--ctx' if ctx else 'default'}; work size unknown)"
    want = -(-(need_tokens + reserve) // CTX_STEP) * CTX_STEP
    if want > cap:
        return cap, (f"context {cap:,} tokens per sequence (capped by {cap_why}; the longest record needs "
                     f"{need_tokens + reserve:,}: records that do not fit become error rows)")
    return want, (f"context {want:,} tokens per sequence, sized to the work (longest record "
                  f"{need_tokens:,} tokens with --max-tokens, +{reserve} reserve, rounded up to {CTX_STEP}; "
                  f"cap {cap_why})")


# How many records to keep in flight when --parallel is not given. On a GPU, batching the generated
# tokens of many sequences is where the speed comes from; on a CPU batching barely helps (the gain
# there is sharing prefixes), so a few sequences are enough and memory is better left alone.
PARALLEL_CAP_GPU = 16
PARALLEL_CAP_CPU = 4
# Share of free RAM the KV cache may take on a CPU (the weights are mmapped and need page cache).
CPU_KV_SHARE = 0.5


def choose_parallel(shape: ModelShape, *, n_ctx: int, gpu: bool, free_bytes: int | None,
                    reserve_bytes: int = DEFAULT_RESERVE_BYTES, kv: KVTypes = F16) -> tuple[int, str]:
    """(sequences in flight, why): as many as the KV cache of n_ctx tokens each fits, up to a cap.

    `free_bytes` is free GPU memory when `gpu`, else available RAM; the weights come out of it first.
    """
    per_seq = shape.n_layer * shape.kv_bytes_per_layer(n_ctx, kv)
    cap = PARALLEL_CAP_GPU if gpu else PARALLEL_CAP_CPU
    where = "GPU" if gpu else "CPU"
    gib = human_bytes
    if free_bytes is None:
        n = min(cap, 4)
        return n, f"--parallel {n} (auto, {where}: free memory unknown)"
    if gpu:
        budget = free_bytes - reserve_bytes - shape.file_bytes
    else:
        budget = int((free_bytes - shape.file_bytes) * CPU_KV_SHARE)
    n = int(max(1, min(cap, budget // per_seq if per_seq > 0 else cap)))
    return n, (f"--parallel {n} (auto, {where}: at most {cap}; KV cache {n} x {n_ctx} tokens = "
               f"{gib(n * per_seq)} of {gib(max(budget, 0))} available for it)")


def available_memory() -> int | None:
    """RAM the system could give us now (MemAvailable), in bytes; None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class AutoPlan:
    """What the engine decides for a model (--parallel, --gpu-layers, --cache-type-k/-v, each given
    or auto) and where that puts the memory: the engine's plan and the doctor's, from given figures."""

    n_ctx: int                 # per sequence
    n_parallel: int
    parallel_reason: str
    offload: OffloadPlan
    kv_bytes: int              # the whole KV cache: n_parallel sequences of n_ctx tokens
    gpu_bytes: int             # weights and KV cache on the GPU (estimate, without the compute reserve)
    host_bytes: int            # weights and KV cache left in RAM (estimate)
    kv: KVTypes = F16
    kv_reason: str = "KV cache f16"

    @property
    def _reach(self) -> tuple[int, int]:
        """What a plan fits: layers on the GPU (the output head counts as one more), then sequences."""
        off = self.offload
        head = off.n_gpu_layers < 0 or off.n_gpu_layers > off.n_layer
        return off.layers_on_gpu + head, self.n_parallel


def auto_plan(shape: ModelShape, *, n_ctx: int, gpu_supported: bool, gpu_free: int | None,
              ram_free: int | None, gpu_layers: int | None = None, parallel: int | None = None,
              min_parallel: int = 1, cache_k: str | None = "f16", cache_v: str | None = "f16") -> AutoPlan:
    """The plan, from given memory figures: --parallel from the KV cache per sequence, then the
    layers that fit beside that cache, for the KV types asked (None = auto: f16 unless a type whose
    effect was measured small fits more layers or sequences on the GPU; see KV_MEASURED_SMALL)."""
    on_gpu = gpu_layers != 0 and gpu_supported and gpu_free is not None
    figures = dict(n_ctx=n_ctx, gpu_supported=gpu_supported, gpu_free=gpu_free, ram_free=ram_free,
                   gpu_layers=gpu_layers, parallel=parallel, min_parallel=min_parallel)
    plans = [_plan_for(shape, kv, on_gpu=on_gpu, **figures) for kv in _kv_candidates(cache_k, cache_v, on_gpu)]
    first = plans[0]
    best = max(plans, key=lambda p: p._reach)   # the first (least quantized) of the best
    if cache_k is not None and cache_v is not None:
        why = f"KV cache {first.kv.label} (given)"
    elif best is first and not on_gpu:
        why = (f"KV cache {first.kv.label} (auto: on the CPU a quantized cache was measured slower and "
               "RAM is rarely what limits the sequences)")
    elif best is first:
        why = f"KV cache {first.kv.label} (auto: a quantized cache would fit no more here)"
    else:
        (layers0, seqs0), (layers, seqs) = first._reach, best._reach
        why = (f"KV cache {best.kv.label} (auto: fits {_fits(layers, seqs, shape.n_layer)} instead of "
               f"{_fits(layers0, seqs0, shape.n_layer)} with {first.kv.label}; its effect on scores was "
               "measured small, see docs/performance.md, KV cache types)")
    return dataclasses.replace(best, kv_reason=why)


def _fits(layers: int, seqs: int, n_layer: int) -> str:
    """What a plan's reach reads as: `layers` counts the output head as one more."""
    where = ("every layer and the output head on the GPU" if layers > n_layer else
             f"{n_layer} layers on the GPU, the output head on the CPU" if layers == n_layer else
             f"{layers} of {n_layer} layers on the GPU")
    return f"{seqs} sequence{'s' if seqs != 1 else ''}, {where}"


def _kv_candidates(cache_k: str | None, cache_v: str | None, on_gpu: bool) -> list[KVTypes]:
    """The KV types to plan with, f16 (or what was given) first, then more quantized ones."""
    options = ["f16"] + (list(KV_MEASURED_SMALL) if on_gpu else [])
    return [KVTypes(cache_k or t, cache_v or t) for t in options]


def _plan_for(shape: ModelShape, kv: KVTypes, *, n_ctx: int, gpu_supported: bool, gpu_free: int | None,
              ram_free: int | None, gpu_layers: int | None, parallel: int | None, min_parallel: int,
              on_gpu: bool) -> AutoPlan:
    n, why = _parallel(shape, kv, n_ctx=n_ctx, on_gpu=on_gpu, free=gpu_free if on_gpu else ram_free,
                       parallel=parallel, least=max(1, min_parallel))
    plan = _layers(shape, kv, n_ctx * n, gpu_supported=gpu_supported, gpu_free=gpu_free, gpu_layers=gpu_layers)
    kv_layer = shape.kv_bytes_per_layer(n_ctx * n, kv)
    # llama.cpp puts the output head on the GPU only when every layer and one more are asked for.
    head = plan.n_gpu_layers < 0 or plan.n_gpu_layers > shape.n_layer
    gpu = plan.layers_on_gpu * (shape.layer_bytes + kv_layer) + (shape.output_bytes if head else 0)
    weights_on_gpu = plan.layers_on_gpu * shape.layer_bytes + (shape.output_bytes if head else 0)
    host = shape.file_bytes - weights_on_gpu + (shape.n_layer - plan.layers_on_gpu) * kv_layer
    return AutoPlan(n_ctx, n, why, plan, shape.n_layer * kv_layer, gpu, host, kv)


def _parallel(shape: ModelShape, kv: KVTypes, *, n_ctx: int, on_gpu: bool, free: int | None,
              parallel: int | None, least: int) -> tuple[int, str]:
    if parallel is not None:
        if parallel < least:
            return least, (f"parallel: {least} sequences, not {parallel}: each of the {least} samples "
                           "of a record decodes in its own")
        return parallel, f"--parallel {parallel} (given)"
    n, why = choose_parallel(shape, n_ctx=n_ctx, gpu=on_gpu, free_bytes=free, kv=kv)
    if n < least:
        return least, f"{why}; {least} sequences after all, one for each sample of a record"
    return n, why


def _layers(shape: ModelShape, kv: KVTypes, total_ctx: int, *, gpu_supported: bool, gpu_free: int | None,
            gpu_layers: int | None) -> OffloadPlan:
    if gpu_layers is None:
        return plan_offload(shape, n_ctx=total_ctx, free_bytes=gpu_free if gpu_supported else None,
                            gpu_supported=gpu_supported, kv=kv)
    if gpu_layers == 0:
        return OffloadPlan(0, 0, shape.n_layer, "--gpu-layers 0: running on CPU")
    if not gpu_supported:
        return OffloadPlan(0, 0, shape.n_layer, f"--gpu-layers {gpu_layers} asked, but this llama.cpp build "
                           "has no GPU offload: running on CPU (reinstall with CMAKE_ARGS=\"-DGGML_CUDA=on\")")
    on = shape.n_layer if gpu_layers < 0 else min(gpu_layers, shape.n_layer)
    return OffloadPlan(gpu_layers, on, shape.n_layer, f"{on} of {shape.n_layer} layers on the GPU (given)")
