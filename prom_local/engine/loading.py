"""Opening a model for an engine: context size, sequences in flight, GPU layers, and the load itself
(retried with fewer GPU layers when llama.cpp runs out of memory). The arithmetic is offload.py's;
this feeds it the file's shape and the machine's free memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ModelLoadError
from .offload import (OffloadPlan, available_memory, choose_parallel, context_size, fewer_layers,
                       free_gpu_memory, plan_offload)
from .config import EngineConfig
from .scheduler import CONTINUATION_RESERVE
from .llama import LlamaModel, check_gguf_file, gpu_offload_supported, require_llama


@dataclass
class Loaded:
    model: LlamaModel
    plan: OffloadPlan
    n_ctx: int          # tokens per sequence
    n_parallel: int     # sequences


def load(path: Path, config: EngineConfig, say: Callable[[str], None]) -> Loaded:
    require_llama()
    check_gguf_file(path)
    probe = LlamaModel(path, vocab_only=True)
    try:
        n_ctx, why = context_size(config.need_tokens, ctx=config.n_ctx, trained=probe.n_ctx_train,
                                  reserve=CONTINUATION_RESERVE)
        say(why)
        n_parallel = _choose_parallel(probe, config, n_ctx, say)
        plan = _plan(probe, config, n_ctx * n_parallel)
        say(plan.reason)
        model, plan = _load_with_retry(path, plan, config.verbose, say)
    finally:
        probe.close()
    return Loaded(model, plan, n_ctx, n_parallel)


def _choose_parallel(probe: LlamaModel, config: EngineConfig, n_ctx: int, say) -> int:
    least = max(1, config.min_parallel)
    if config.n_parallel is not None:
        if config.n_parallel < least:
            say(f"parallel: {least} sequences, not {config.n_parallel}: each of the {least} samples "
                "of a record decodes in its own")
        return max(least, int(config.n_parallel))
    on_gpu = config.gpu_layers != 0 and gpu_offload_supported()
    free = free_gpu_memory() if on_gpu else None
    if on_gpu and free is None:
        on_gpu = False  # plan_offload will run on CPU too
    n, reason = choose_parallel(probe.shape(), n_ctx=n_ctx, gpu=on_gpu,
                                free_bytes=free if on_gpu else available_memory())
    say(reason)
    if n < least:
        say(f"parallel: {least} sequences after all, one for each sample of a record")
    return max(n, least)


def _plan(probe: LlamaModel, config: EngineConfig, total_ctx: int) -> OffloadPlan:
    wanted = config.gpu_layers
    supported = gpu_offload_supported()
    if wanted is None:
        return plan_offload(probe.shape(), n_ctx=total_ctx,
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
