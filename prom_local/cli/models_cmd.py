"""`prom-local models`: the known models and what is in the store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ..store.models import list_store, registry, store_dir
from ..units import format_bytes
from .options import ModelsDirOpt, err_console


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(models_dir: ModelsDirOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
        """List GGUFs in the model store and the models the registry knows how to get."""
        present = list_store(models_dir)
        if as_json:
            print(json.dumps({"store": str(store_dir(models_dir)), "files": present,
                              "registry": registry()}, indent=1))
            return
        err_console.print(f"store: {store_dir(models_dir)}")
        table = Table("name:quant", "size", "sha256", "profile")
        for row in present:
            table.add_row(f"{row['name']}:{row['quant']}", format_bytes(row['size']),
                          (row["sha256"] or "-")[:12], row["profile"] or "-")
        err_console.print(table if present else "no GGUF files in the store yet")
        known = Table("registry name", "hub checkpoint", "default quant", "description")
        for name, entry in registry().items():
            known.add_row(name, entry.get("hub_repo", "-"), entry.get("default_quant", "-"),
                          entry.get("description", ""))
        err_console.print(known)
