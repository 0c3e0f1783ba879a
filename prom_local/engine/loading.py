"""Opening a model for an engine: context size, sequences in flight, GPU layers, KV cache types, and
the load itself (retried with fewer GPU layers when llama.cpp runs out of memory). The plan is
offload.auto_plan's, the same `doctor` shows; this feeds it the file's shape and the machine's free
memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelLoadError
from .devices import free_gpu_memory
from .offload import (AutoPlan, KVTypes, ModelShape, OffloadPlan, auto_plan, available_memory, context_size,
                       fewer_layers, parse_cache_type)
from .config import EngineConfig
from .scheduler import CONTINUATION_RESERVE
from .llama import LlamaModel, check_gguf_file, gpu_offload_supported, require_llama


@dataclass
class Loaded:
    model: LlamaModel
    plan: OffloadPlan
    n_ctx: int          # tokens per sequence
    n_parallel: int     # sequences
    kv: KVTypes         # the types K and V are cached in


def load(path: Path, config: EngineConfig, say: Callable[[str], None]) -> Loaded:
    require_llama()
    check_gguf_file(path)
    probe = LlamaModel(path, vocab_only=True)
    try:
        n_ctx, why = context_size(config.need_tokens, ctx=config.n_ctx, trained=probe.n_ctx_train,
                                  reserve=CONTINUATION_RESERVE)
        say(why)
        plan = plan_for(probe.shape(), config, n_ctx)
        for line in (plan.parallel_reason, plan.offload.reason, plan.kv_reason):
            say(line)
        model, offload = _load_with_retry(path, plan.offload, config.verbose, say)
    finally:
        probe.close()
    return Loaded(model, offload, n_ctx, plan.n_parallel, plan.kv)


def plan_for(shape: ModelShape, config: EngineConfig, n_ctx: int) -> AutoPlan:
    """offload.auto_plan (the planner `doctor` shows) with this machine's free memory."""
    supported = gpu_offload_supported()
    gpu_free = free_gpu_memory() if supported and config.gpu_layers != 0 else None
    return auto_plan(shape, n_ctx=n_ctx, gpu_supported=supported, gpu_free=gpu_free,
                     ram_free=available_memory(), gpu_layers=config.gpu_layers, parallel=config.n_parallel,
                     min_parallel=config.min_parallel, cache_k=parse_cache_type(config.cache_type_k),
                     cache_v=parse_cache_type(config.cache_type_v))


def _load_with_retry(path: Path, plan: OffloadPlan, verbose: bool, say) -> tuple[LlamaModel, OffloadPlan]:
    while True:
        try:
            return LlamaModel(path, n_gpu_layers=plan.n_gpu_layers, verbose=verbose), plan
        except ModelLoadError:
            if plan.n_gpu_layers == 0:
                raise
            fewer = fewer_layers(plan.n_gpu_layers, plan.n_layer)
            say(f"loading with {plan.layers_on_gpu} GPU layers failed (out of GPU memory?); "
                f"retrying with {fewer}")
            plan = OffloadPlan(fewer, fewer, plan.n_layer, f"{fewer} of {plan.n_layer} layers on the GPU "
                               "after a failed load")
