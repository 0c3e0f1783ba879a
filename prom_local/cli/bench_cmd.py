"""`prom-local bench`: prompt and generation speed, records/min and peak memory at each --parallel."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..diagnostics.bench import BenchRow, bench_records, run_bench
from ..store.models import resolve_model
from ..units import format_bytes
from .options import (CacheTypeKOpt, CacheTypeVOpt, CtxOpt, DraftOpt, FlashAttnOpt, EngineOptions, GpuLayersOpt, MaxTokensOpt, ModelOpt, ModelsDirOpt, ProfileOpt,
                      ThreadsOpt, VerboseOpt, err_console)


def parse_parallels(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"expected numbers >= 1 separated by commas (e.g. 1,4,8), not {text!r}",
                                 param_hint="--parallel")
    return values


def table(rows: list[BenchRow]) -> Table:
    out = Table(title="prom-local bench", title_justify="left")
    for name in ("parallel", "where", "ctx", "load s", "prompt tok/s", "gen tok/s", "records/min",
                 "peak RSS", "errors", "drafts acc./drafted"):
        out.add_column(name, justify="left" if name == "where" else "right")
    for r in rows:
        where = "CPU" if r.gpu_layers == 0 else f"GPU {r.gpu_layers}/{r.n_layer}"
        gen = r.generated_tokens_per_second
        out.add_row(str(r.parallel), where, f"{r.n_ctx:,}", f"{r.load_seconds:.2f}",
                    f"{r.prompt_tokens_per_second:,.0f}", "-" if gen is None else f"{gen:,.1f}",
                    f"{r.records_per_minute:,.1f}",
                    "?" if r.peak_rss_bytes is None else format_bytes(r.peak_rss_bytes), str(r.errors),
                    f"{r.accepted_tokens:,}/{r.drafted_tokens:,}" if r.draft else "off")
    return out


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        model: ModelOpt = None,
        models_dir: ModelsDirOpt = None,
        profile: ProfileOpt = None,
        ctx: CtxOpt = None,
        gpu_layers: GpuLayersOpt = "auto",
        threads: ThreadsOpt = None,
        parallel: Annotated[str, typer.Option(
            "--parallel", "-p", metavar="N[,N...]", help="The --parallel settings to measure, each "
            "on a fresh engine.")] = "1,4",
        records: Annotated[int, typer.Option(
            "--records", "-n", min=1, help="Built-in Korean judge records per setting (8 distinct; more "
            "are copies with a numbered instruction).")] = 8,
        max_tokens: MaxTokensOpt = 256,
        cache_type_k: CacheTypeKOpt = "auto",
        cache_type_v: CacheTypeVOpt = "auto",
        flash_attn: FlashAttnOpt = None,
        draft: DraftOpt = None,
        verbose: VerboseOpt = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    ) -> None:
        """Measure your model on this machine: prompt tokens/s, generated tokens/s, records/min and
        peak RSS at each --parallel setting, grading built-in Korean judge records through the same
        engine code as `score` (greedy). Each setting runs twice on a fresh engine: the full run
        (records/min) and a prompt-only pass (prompt tokens/s); generated tokens/s is the run's
        generated tokens over its time not spent on prompts. The table (or --json) goes to stdout,
        progress and the engine's start-up lines to stderr.

        Exit codes: 0 measured; 3 model missing or unloadable.
        """
        settings = parse_parallels(parallel)
        opts = EngineOptions(model=model, models_dir=models_dir, profile=profile, ctx=ctx, gpu_layers=gpu_layers,
                             threads=threads, max_tokens=max_tokens, verbose=verbose, cache_type_k=cache_type_k,
                             cache_type_v=cache_type_v, flash_attn=flash_attn, draft=draft)
        resolved = resolve_model(opts.model, opts.models_dir)
        work = bench_records(records)
        say = lambda m: err_console.print(f"[dim]{m}[/dim]")  # noqa: E731
        say(f"model: {resolved.path}")
        progress = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err_console, transient=True)
        task = progress.add_task("bench", total=2 * len(work) * len(settings))
        with progress:
            rows, setup = run_bench(resolved.path, parallels=settings, engine=opts.engine_config(),
                                    sampling=opts.sampling_params(), profile=profile or resolved.profile,
                                    records=work, on_status=say, on_tick=lambda: progress.advance(task))
        if as_json:
            print(json.dumps({"setup": setup, "rows": [r.as_dict() for r in rows]}, indent=1, ensure_ascii=False))
            return
        out = Console(highlight=False, soft_wrap=True)   # stdout: `bench > bench.txt` keeps the table
        out.print(table(rows))
        out.print(f"{setup['records']} records, longest prompt {setup['longest_prompt']:,} tokens, "
                  f"--max-tokens {setup['max_tokens']}; {setup.get('offload', '')}; KV cache "
                  f"{setup.get('kv_cache', '?')}; flash attention {setup.get('flash_attn', '?')}")
