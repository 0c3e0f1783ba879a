"""`prom-local info`: what a GGUF is, and what this llama.cpp build can do with it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ..engine import gpu_offload_supported
from ..engine.model_info import gguf_summary
from ..store.models import resolve_model
from ..units import format_bytes
from .options import ModelsDirOpt, err_console


def describe(path) -> dict:
    """The GGUF summary under the names `info --json` has always printed, plus what this build can do."""
    s = gguf_summary(path)
    return {"path": str(path), "name": s["name"], "architecture": s["architecture"], "quant": s["quant"],
            "size_bytes": path.stat().st_size, "context_length": s["context_length"], "layers": s["layers"],
            "vocab_size": s["n_vocab"], "tokenizer": s["tokenizer_model"], "tokenizer_pre": s["tokenizer_pre"],
            "chat_template": s["chat_template_sha256"] is not None,
            "gpu_offload_supported": gpu_offload_supported()}


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        model: Annotated[str, typer.Argument(help="GGUF path or store name (prometheus-ko:Q4_K_M).")],
        models_dir: ModelsDirOpt = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """GGUF metadata (architecture, quant type, size, context length, chat template) and whether
        this llama.cpp build can offload to a GPU. Reads no weights."""
        data = describe(resolve_model(model, models_dir).path)
        if as_json:
            print(json.dumps(data, indent=1))
            return
        table = Table(show_header=False, box=None)
        for key, value in data.items():
            if key == "size_bytes":
                value = f"{format_bytes(value)} ({value:,} bytes)"
            table.add_row(f"[bold]{key}[/bold]", str(value))
        err_console.print(table)
