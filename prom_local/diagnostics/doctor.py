"""`prom-local doctor`: what this install can do with a model, and whether it can run it at all.

Everything here is read, not loaded: the llama.cpp build (backend, version, GPU offload), the devices
it sees, free RAM, the GGUF's header and metadata (vocabulary-only load), and the plan the engine
would choose, from the engine's own planner (offload.auto_plan). Memory figures can be overridden
(`memory_budget`, `gpu_memory`) to ask "what if" — how the plan looks on a smaller machine or a laptop GPU.
"""

from __future__ import annotations

import os
import platform
import re
import struct
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..engine.devices import free_gpu_memory, gpus_seen
from ..engine import CONTINUATION_RESERVE, GGUF_MAGIC, build_backend, gpu_offload_supported, load_vocab_only
from ..engine.llama import binding_version
from ..errors import ExitCode, InputError, PromLocalError
from ..engine.model_info import quant_from_metadata
from ..engine.context import flash_attn_label, flash_attn_plan
from ..engine.offload import KVTypes, auto_plan, available_memory, context_size, retry_layers
from ..judging.records import AnyRecord, Record
from ..inputs import read_records
from ..runs.workload import WorkSize, measure
from ..settings import DEFAULT_PROFILE
from ..units import format_bytes

# doctor's exit codes, from the one table (also in `prom-local doctor --help` and docs/formats.md): the model
# can run here; no model, not a GGUF, or a GGUF without weights; it does not fit in memory (RAM, after
# what the GPU takes).
EXIT_OK, EXIT_MODEL, EXIT_MEMORY = ExitCode.OK, ExitCode.MODEL, ExitCode.MEMORY

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """'6GiB', '512MiB', '8G' (binary), '8GB' (decimal), or bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 6GiB, 512MiB, 8000000000)")
    return int(float(match.group(1)) * _UNITS[unit])


def gguf_tensor_count(path: Path) -> int | None:
    """Tensors the GGUF header declares (0 for a vocabulary-only file); None if not readable."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) < 16 or head[:4] != GGUF_MAGIC:
        return None
    version = struct.unpack("<I", head[4:8])[0]
    if version < 2:  # GGUF v1 (u32 counts) predates every llama.cpp this project supports
        return None
    return struct.unpack("<Q", head[8:16])[0]


def install_command(system: str | None = None, version: str | None = None) -> str:
    """The command that replaces this llama-cpp-python with one that offloads to the GPU."""
    system = system or platform.system()
    pin = f"=={version}" if version else ""
    flag = "-DGGML_METAL=on" if system == "Darwin" else "-DGGML_CUDA=on"
    return (f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir '
            f"llama-cpp-python{pin}")


def builtin_records() -> list[Record]:
    """The short Korean judge records shipped for `bench` (and doctor's typical context)."""
    path = resources.files("prom_local.data").joinpath("bench-ko.jsonl")
    with resources.as_file(path) as real:
        # The file is ours and holds absolute records only (test_bench checks): what is left to
        # drop is a line that does not read, which has no place in a benchmark.
        return [r for r in read_records(real) if not isinstance(r, InputError)]  # type: ignore[misc]


def _gib(n: int | None) -> str:
    if n is None:
        return "?"
    return format_bytes(n)


@dataclass
class Diagnosis:
    llama_cpp_version: str
    backend: str
    gpu_offload: bool
    gpus: list[dict]
    gpus_source: str
    cpu_cores: int
    ram_available_bytes: int | None
    ram_budget_given: bool = False
    gpu_memory_given: bool = False
    model: dict | None = None
    context: dict | None = None
    plan: dict | None = None
    install_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    verdict: str = ""
    exit_code: int = EXIT_OK

    def as_dict(self) -> dict:
        return asdict(self)


def _environment(memory_budget: int | None) -> Diagnosis:
    gpus, source = gpus_seen()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    supported = gpu_offload_supported()
    return Diagnosis(
        llama_cpp_version=binding_version(), backend=build_backend(), gpu_offload=supported,
        gpus=[{"name": g.description, "device": g.name, "free_bytes": g.free_bytes,
               "total_bytes": g.total_bytes} for g in gpus],
        gpus_source=source, cpu_cores=cores,
        ram_available_bytes=memory_budget if memory_budget is not None else available_memory(),
        ram_budget_given=memory_budget is not None,
        install_hint=None if supported else install_command(version=binding_version()))


def diagnose(model_path: Path | None, *, model_error: str | None = None, memory_budget: int | None = None,
             gpu_memory: int | None = None, gpu_layers: int | None = None, parallel: int | None = None,
             ctx: int | None = None, max_tokens: int = 512, records: list[AnyRecord] | None = None,
             profile: str = DEFAULT_PROFILE, cache_k: str | None = None, cache_v: str | None = None,
             flash_attn: bool | None = None) -> Diagnosis:
    """The whole report. `records` sizes the context (default: the built-in judge records);
    `memory_budget` / `gpu_memory` replace free RAM / free GPU memory (what-if, and for tests);
    `cache_k` / `cache_v`: KV cache types, None = auto. `flash_attn`: None = auto."""
    diag = _environment(memory_budget)
    if model_path is None:
        diag.verdict, diag.exit_code = f"cannot run: {model_error or 'no model given'}", EXIT_MODEL
        return diag
    try:
        _read_model(diag, model_path)
    except PromLocalError as exc:
        diag.verdict, diag.exit_code = f"cannot run: {exc}", EXIT_MODEL
        return diag
    if diag.exit_code != EXIT_OK:
        return diag

    work = measure(records if records is not None else builtin_records(), model_path, profile, max_tokens)
    _plan(diag, model_path, work, records is None, gpu_memory=gpu_memory, gpu_layers=gpu_layers,
          parallel=parallel, ctx=ctx, cache_k=cache_k, cache_v=cache_v)
    if diag.plan:
        kv = KVTypes(diag.plan["cache_type_k"], diag.plan["cache_type_v"])
        diag.plan.update(flash_attn=flash_attn_label(flash_attn), flash_attn_reason=flash_attn_plan(flash_attn, kv))
    return diag


def _read_model(diag: Diagnosis, path: Path) -> None:
    size = path.stat().st_size if path.is_file() else None
    tensors = gguf_tensor_count(path) if path.is_file() else None
    try:
        model = load_vocab_only(path)  # raises for a missing file, a directory, or not a GGUF
    except PromLocalError:
        if tensors == 0:  # a header with no tensors and no readable vocabulary either
            model = None
        else:
            raise
    facts = {"path": str(path), "size_bytes": size, "tensors": tensors}
    layers = 0
    if model is not None:
        meta = model.metadata
        layers = model.n_layer
        facts.update(name=meta.get("general.name"), architecture=model.architecture,
                     quant=quant_from_metadata(meta), layers=layers, trained_context=model.n_ctx_train)
        model.close()
    diag.model = facts
    if not tensors or layers <= 0:
        diag.verdict = (f"cannot run: {path} is a GGUF without model weights ({tensors or 0} tensors, "
                        f"{layers} layers): a vocabulary-only file, not a model")
        diag.exit_code = EXIT_MODEL


def _plan(diag: Diagnosis, path: Path, work: WorkSize | None, builtin: bool, *, gpu_memory: int | None,
          gpu_layers: int | None, parallel: int | None, ctx: int | None, cache_k: str | None = None,
          cache_v: str | None = None) -> None:
    probe = load_vocab_only(path)
    try:
        shape, trained = probe.shape(), probe.n_ctx_train
    finally:
        probe.close()
    n_ctx, ctx_why = context_size(work.need_tokens if work else None, ctx=ctx, trained=trained,
                                  reserve=CONTINUATION_RESERVE)
    diag.context = {"n_ctx": n_ctx, "reason": ctx_why,
                    "sized_from": "built-in judge records" if builtin else "the given records",
                    "longest_prompt": work.longest_prompt if work else None,
                    "max_tokens": work.max_tokens if work else None}
    if builtin:
        diag.notes.append("context sized to the built-in judge records; long inputs need more "
                          "(`score` sizes it to the actual input)")

    supported = diag.gpu_offload or gpu_memory is not None
    if gpu_memory is not None:
        diag.gpu_memory_given = True
        if not diag.gpu_offload:
            diag.notes.append(f"what-if: planned as if this build could offload, with {_gib(gpu_memory)} "
                              "of free GPU memory")
    gpu_free = gpu_memory if gpu_memory is not None else (free_gpu_memory() if supported else None)
    if supported and gpu_free is None and diag.gpus:
        gpu_free = diag.gpus[0]["free_bytes"]  # no nvidia-smi (Metal, Vulkan): the backend's own figure
    plan = auto_plan(shape, n_ctx=n_ctx, gpu_supported=supported, gpu_free=gpu_free,
                     ram_free=diag.ram_available_bytes, gpu_layers=gpu_layers, parallel=parallel,
                     cache_k=cache_k, cache_v=cache_v)
    off = plan.offload
    diag.plan = {"n_parallel": plan.n_parallel, "parallel_reason": plan.parallel_reason,
                 "n_gpu_layers": off.n_gpu_layers, "layers_on_gpu": off.layers_on_gpu, "n_layer": off.n_layer,
                 "offload_reason": off.reason, "kv_cache_bytes": plan.kv_bytes, "gpu_bytes": plan.gpu_bytes,
                 "ram_bytes": plan.host_bytes, "gpu_free_bytes": gpu_free, "cache_type_k": plan.kv.k,
                 "cache_type_v": plan.kv.v, "kv_reason": plan.kv_reason,
                 "kv_bytes_per_token": shape.kv_bytes_per_token(plan.kv),
                 "retry_layers": retry_layers(off.n_gpu_layers, off.n_layer) if off.n_gpu_layers else []}
    ram = diag.ram_available_bytes
    if ram is not None and plan.host_bytes > ram:
        where = "the layers left on the CPU" if off.layers_on_gpu else "the weights"
        diag.verdict = (f"cannot run: not enough memory: {where} and their KV cache need "
                        f"{_gib(plan.host_bytes)} of RAM at --parallel {plan.n_parallel}, "
                        f"{_gib(ram)} available" + (" (--memory-budget)" if diag.ram_budget_given else ""))
        diag.exit_code = EXIT_MEMORY
        return
    where = (f"{off.layers_on_gpu} of {off.n_layer} layers on the GPU" if off.layers_on_gpu
             else "on the CPU")
    diag.verdict = (f"can run: {where}, --parallel {plan.n_parallel}, {n_ctx:,} tokens per sequence "
                    f"(KV cache {plan.kv.label}, {_gib(plan.kv_bytes)})")
