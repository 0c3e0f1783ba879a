"""`prom-local render`: show exactly what the model will see, without loading weights."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..engine import load_vocab_only
from ..errors import ExitCode, InputError
from ..judging.prompt_tokens import render_pieces, tokenize_pieces
from ..store.models import resolve_model
from ..judging.prompts import get_profile
from ..inputs import read_records
from .options import ModelOpt, ModelsDirOpt, ProfileOpt
from ..settings import DEFAULT_PROFILE


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        input: Annotated[str, typer.Argument(help="JSONL records ('-' for stdin).")],
        model: ModelOpt = None,
        models_dir: ModelsDirOpt = None,
        profile: ProfileOpt = None,
    ) -> None:
        """Print one JSON object per input line: id and the full prompt (special tokens included);
        with --model also its token ids, from the GGUF's own tokenizer and chat template."""
        resolved = resolve_model(model, models_dir) if model else None
        llama = load_vocab_only(resolved.path) if resolved else None
        prof = get_profile(profile or (resolved.profile if resolved else DEFAULT_PROFILE))
        errors = 0
        for item in read_records(input):
            if isinstance(item, InputError):
                errors += 1
                row = {"id": item.record_id, "error": str(item)}
            else:
                pieces = render_pieces(item, prof, llama)
                row = {"id": item.id, "prompt": "".join(text for text, _ in pieces)}
                if llama is not None:
                    row["tokens"] = tokenize_pieces(llama, pieces)
                    row["n_tokens"] = len(row["tokens"])
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        if errors:
            raise typer.Exit(ExitCode.USAGE)
