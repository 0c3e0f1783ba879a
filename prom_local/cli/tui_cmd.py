"""`prom-local tui`: the Textual app, with the same engine options as every other command."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..errors import PromLocalError, UsageError
from ..inputs import valid_records
from ..runs.workload import WorkSize, measure
from ..engine.model_info import ModelInfo
from ..store.models import resolve_model
from ..backends.remote import RemoteJudge
from .options import EngineOptions, with_engine_options
from .remote_opts import ApiKeyFileOpt, ApiKeyOpt, ServerOpt, check_remote_options, read_key, server_from_flags


def make_loader(opts: EngineOptions, input: Path | None = None) -> Callable:
    """What the app calls (in a worker thread) to load a model: the CLI's options, another spec.
    With `input` (the file the batch screen opens), each sequence's context is sized to that file's
    longest record as `score` sizes it, not the 8,192-token default: on a laptop GPU that memory
    is layers and sequences."""

    # llama.cpp's CPU threads spin while they wait for each other: one per core leaves none for the
    # UI, and the whole app stutters (and decoding itself slows down). Keep one core free unless told.
    threads = opts.threads or max(1, len(os.sched_getaffinity(0)) - 1)

    def load(spec: str | None, on_status: Callable[[str], None]):
        chosen = replace(opts, model=spec if spec is not None else opts.model, threads=threads)
        resolved = resolve_model(chosen.model, chosen.models_dir)
        work = _file_work(input, resolved.path, chosen.profile or resolved.profile, chosen.max_tokens)
        judge = chosen.judge(on_status=on_status, need_tokens=work.need_tokens if work else None)
        info = judge.model_info(resolved)
        return judge, (replace(info, ctx_source=input.name) if work and opts.ctx is None else info)

    return load


def _file_work(input: Path | None, model: Path, profile: str, max_tokens: int) -> WorkSize | None:
    """The size of the work in the file the TUI opens (None: no file, or nothing in it to grade; an
    unreadable file is the batch screen's to report)."""
    if input is None or not input.is_file():
        return None
    try:
        return measure(valid_records(input), model, profile, max_tokens)
    except PromLocalError:
        return None


def make_remote_loader(server: str, api_key: str | None, api_key_file: Path | None,
                       opts: EngineOptions) -> Callable:
    """The app's loader with --server: the server's model, graded over HTTP. Picking another
    model (F4) is refused: the server decides which model it serves."""

    def load(spec: str | None, on_status: Callable[[str], None]):
        if spec != opts.model:
            raise UsageError(f"this TUI grades on the server at {server}, which serves one model; "
                             "restart it without --server to use the models here")
        judge = server_from_flags(server, api_key, api_key_file, opts, on_status=on_status)
        return judge, remote_model_info(judge)

    return load


def remote_model_info(judge: RemoteJudge) -> ModelInfo:
    """The model panel's facts about the server's model, as the server reports them."""
    info, details = judge.info, judge.info.details
    return ModelInfo(name=info.model, quant=details.get("quant"), path=Path(info.path or info.model),
                     size_bytes=int(details.get("size_bytes") or 0),
                     layers_on_gpu=int(details.get("layers_on_gpu") or 0), n_layer=int(details.get("n_layer") or 0),
                     n_ctx=int(info.n_ctx or 0), backend=f"{info.backend or '?'} server",
                     offload=f"graded by the server at {info.url}")


def register(app: typer.Typer) -> None:
    @app.command("tui")
    @with_engine_options
    def tui(
        input: Annotated[Optional[Path], typer.Argument(
            help="Open this JSONL file in the batch screen.", show_default=False)] = None,
        output: Annotated[Optional[Path], typer.Option(
            "--output", "-o", help="Results file for INPUT (default: INPUT.prom.jsonl, as `score`).")] = None,
        server: ServerOpt = None,
        api_key: ApiKeyOpt = None,
        api_key_file: ApiKeyFileOpt = None,
        *, opts: EngineOptions,
    ) -> None:
        """Interactive grading and batch review in the terminal (F1 lists the keys)."""
        opts.engine_config()  # a bad option fails here, not in the app's worker thread
        check_remote_options(server, api_key_file, opts)
        from ..tui import PromLocalApp   # Textual loads only for this command

        loader = (make_remote_loader(server, read_key(api_key, api_key_file), None, opts) if server is not None
                  else make_loader(opts, input))
        PromLocalApp(loader, model=opts.model, models_dir=opts.models_dir,
                     batch_input=input, batch_output=output).run()
