"""`prom-local doctor`: what this install can do with a model, in one screen (or --json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..diagnostics.doctor import Diagnosis, diagnose, parse_size
from ..errors import PromLocalError
from ..store.models import resolve_model
from ..engine.offload import parse_cache_type, parse_gpu_layers
from ..inputs import valid_records
from .options import (FLAGS, CacheTypeKOpt, CacheTypeVOpt, CtxOpt, FlashAttnOpt, GpuLayersOpt, MaxTokensOpt, ModelOpt, ModelsDirOpt, ParallelOpt, ProfileOpt,
                      err_console)
from ..settings import DEFAULT_PROFILE, ENV_MEMORY_BUDGET
from ..units import format_bytes


def _size_option(value: Optional[str], name: str) -> Optional[int]:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def _gib(n) -> str:
    if n is None:
        return "?"
    return format_bytes(n)


def show(diag: Diagnosis) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    row = lambda key, value: table.add_row(f"[bold]{key}[/bold]", str(value))  # noqa: E731
    row("llama.cpp", f"llama-cpp-python {diag.llama_cpp_version}, {diag.backend} build, GPU offload "
        + ("compiled in" if diag.gpu_offload else "not compiled in"))
    if diag.gpus:
        for gpu in diag.gpus:
            row("GPU", f"{gpu['name']} ({gpu['device']}): {_gib(gpu['free_bytes'])} free of "
                f"{_gib(gpu['total_bytes'])}  [dim]({diag.gpus_source})[/dim]")
    else:
        row("GPU", f"none seen ({diag.gpus_source})")
    row("CPU", f"{diag.cpu_cores} cores, {_gib(diag.ram_available_bytes)} RAM available"
        + (" (--memory-budget)" if diag.ram_budget_given else ""))
    if diag.model:
        m = diag.model
        row("model", m["path"])
        if "layers" in m:
            row("", f"{m.get('name') or '?'}: {m.get('architecture')} {m.get('quant') or ''}, "
                f"{_gib(m['size_bytes'])}, {m['layers']} layers, trained context {m['trained_context']:,}")
    if diag.context:
        row("context", diag.context["reason"].removeprefix("context "))
    if diag.plan:
        p = diag.plan
        row("plan", p["offload_reason"])
        row("", p["parallel_reason"])
        row("", f"{p['kv_reason']}; {p['kv_bytes_per_token'] / 1024:,.1f} KiB per token")
        row("", p["flash_attn_reason"])
        row("", f"KV cache {_gib(p['kv_cache_bytes'])}; on the GPU {_gib(p['gpu_bytes'])}, "
            f"in RAM {_gib(p['ram_bytes'])}")
        if p["retry_layers"]:
            row("", "if loading runs out of GPU memory, retried with "
                + ", ".join(map(str, p["retry_layers"])) + " layers")
    for note in diag.notes:
        row("note", note)
    if diag.install_hint:
        row("GPU build", diag.install_hint)
    err_console.print(table)
    colour = "green" if diag.exit_code == 0 else "red"
    err_console.print(f"[bold {colour}]{diag.verdict}[/bold {colour}]")


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        model: ModelOpt = None,
        models_dir: ModelsDirOpt = None,
        profile: ProfileOpt = None,
        ctx: CtxOpt = None,
        gpu_layers: GpuLayersOpt = "auto",
        parallel: ParallelOpt = None,
        max_tokens: MaxTokensOpt = 512,
        cache_type_k: CacheTypeKOpt = "auto",
        cache_type_v: CacheTypeVOpt = "auto",
        flash_attn: FlashAttnOpt = None,
        input: Annotated[Optional[Path], typer.Option(
            "--input", "-i", help="Size the context to these JSONL records (default: the built-in judge "
            "records).")] = None,
        memory_budget: Annotated[Optional[str], typer.Option(
            "--memory-budget", envvar=ENV_MEMORY_BUDGET, metavar="SIZE",
            help="What-if (and for tests): plan as if this much RAM were available, e.g. 6GiB.")] = None,
        gpu_memory: Annotated[Optional[str], typer.Option(
            "--gpu-memory", metavar="SIZE", help="What-if: plan as if a GPU build had this much free GPU "
            "memory, e.g. 8GiB (shows a laptop GPU's plan on any machine).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    ) -> None:
        """What this install can do with a model: llama.cpp build and GPU offload, GPUs, CPU and RAM,
        the model's size, layers and context, and the plan `--gpu-layers auto` / `--parallel auto`
        would choose, with why. Reads no weights.

        Exit codes: 0 the model can run here; 3 no model, not a GGUF, or a GGUF without weights;
        10 not enough memory for the model.
        """
        budget = _size_option(memory_budget, "--memory-budget")
        gpu_free = _size_option(gpu_memory, "--gpu-memory")
        try:
            layers = parse_gpu_layers(gpu_layers)
            cache_k, cache_v = parse_cache_type(cache_type_k), parse_cache_type(cache_type_v)
            fa = FLAGS["flash_attn"].value_for_field(flash_attn)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        path, error, default_profile = None, None, DEFAULT_PROFILE
        try:
            resolved = resolve_model(model, models_dir)
            path, default_profile = resolved.path, resolved.profile
        except PromLocalError as exc:
            error = str(exc)
        records = None
        if input is not None:
            records = valid_records(input)   # pairs too
        diag = diagnose(path, model_error=error, memory_budget=budget, gpu_memory=gpu_free, gpu_layers=layers,
                        parallel=parallel, ctx=ctx, max_tokens=max_tokens, records=records or None,
                        profile=profile or default_profile, cache_k=cache_k, cache_v=cache_v,
                        flash_attn=fa)
        if as_json:
            print(json.dumps(diag.as_dict(), indent=1, ensure_ascii=False))
        else:
            show(diag)
        if diag.exit_code:
            raise typer.Exit(diag.exit_code)
