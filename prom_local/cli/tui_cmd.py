"""`prom-local tui`: the Textual app, with the same engine options as every other command."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..model_info import describe_judge
from ..models import resolve_model
from .options import EngineOptions, with_engine_options


def make_loader(opts: EngineOptions) -> Callable:
    """What the app calls (in a worker thread) to load a model: the CLI's options, another spec."""

    # llama.cpp's CPU threads spin while they wait for each other: one per core leaves none for the
    # UI, and the whole app stutters (and decoding itself slows down). Keep one core free unless told.
    threads = opts.threads or max(1, len(os.sched_getaffinity(0)) - 1)

    def load(spec: str | None, on_status: Callable[[str], None]):
        chosen = replace(opts, model=spec if spec is not None else opts.model, threads=threads)
        resolved = resolve_model(chosen.model, chosen.models_dir)
        judge = chosen.judge(on_status=on_status)
        return judge, describe_judge(judge, resolved)

    return load


def register(app: typer.Typer) -> None:
    @app.command("tui")
    @with_engine_options
    def tui(
        input: Annotated[Optional[Path], typer.Argument(
            help="Open this JSONL file in the batch screen.", show_default=False)] = None,
        output: Annotated[Optional[Path], typer.Option(
            "--output", "-o", help="Results file for INPUT (default: INPUT.prom.jsonl, as `score`).")] = None,
        *, opts: EngineOptions,
    ) -> None:
        """Interactive grading and batch review in the terminal (F1 lists the keys)."""
        opts.engine_config()  # a bad option fails here, not in the app's worker thread
        from ..tui import PromLocalApp   # Textual loads only for this command

        PromLocalApp(make_loader(opts), model=opts.model, models_dir=opts.models_dir,
                     batch_input=input, batch_output=output).run()
