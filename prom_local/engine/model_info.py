"""What a loaded model is, in the words people use: name, quant type, size, GPU layers, backend.

Plain data for the TUI's model panel (and anything else that shows a loaded Judge), derived from
the GGUF's metadata and the engine's offload plan; and the one summary of a GGUF file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .llama import build_backend, load_vocab_only
from ..units import format_bytes


class StoreName(Protocol):
    """What describe_engine takes from a store entry (store.models.ResolvedModel), as a protocol:
    the engine sits below the store and does not import it."""
    name: str | None
    quant: str | None

@functools.lru_cache(maxsize=1)
def ftype_table() -> dict[str, int]:
    """Every llama_ftype the linked llama.cpp knows, by the name people use (Q4_K_M, Q8_0, BF16...)."""
    import llama_cpp

    table = {}
    for key in dir(llama_cpp):
        for prefix in ("LLAMA_FTYPE_MOSTLY_", "LLAMA_FTYPE_ALL_"):
            if key.startswith(prefix):
                table[key[len(prefix):]] = int(getattr(llama_cpp, key))
    return table


def quant_from_metadata(metadata: dict[str, str]) -> str | None:
    """general.file_type (llama_ftype) -> its name; None when absent or unknown to this llama.cpp."""
    ftype = metadata.get("general.file_type")
    if ftype is None or not ftype.isdigit():
        return None
    return next((name for name, value in ftype_table().items() if value == int(ftype)), None)


def gguf_summary(path: str | Path) -> dict:
    """What a GGUF is, from its metadata alone (a vocab-only load reads no weights). The one summary
    `info` prints and `pull`/`convert` record in the store manifest ("gguf", without the quant)."""
    model = load_vocab_only(path)
    try:
        meta = model.metadata
        template = model.chat_template
        return {"name": meta.get("general.name"), "architecture": model.architecture,
                "quant": quant_from_metadata(meta), "context_length": model.n_ctx_train,
                "layers": model.n_layer, "n_vocab": model.n_vocab,
                "tokenizer_model": meta.get("tokenizer.ggml.model"),
                "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None}
    finally:
        model.close()


human_size = format_bytes   # the name the TUI's model picker imports


@dataclass(frozen=True)
class ModelInfo:
    name: str
    quant: str | None
    path: Path
    size_bytes: int
    layers_on_gpu: int
    n_layer: int
    n_ctx: int
    backend: str          # the llama.cpp build: CPU, CUDA, Metal, ...
    offload: str          # why that many layers are on the GPU
    ctx_source: str = ""  # what n_ctx was sized to, when not the default (the TUI's open file)

    @property
    def size(self) -> str:
        return human_size(self.size_bytes)


def describe_engine(engine, resolved: StoreName | None = None) -> ModelInfo:
    """ModelInfo of a loaded Engine (Judge.model_info asks it); `resolved` (from the store)
    supplies the store name and quant."""
    model = engine.model
    path = Path(model.path)
    quant = (resolved.quant if resolved and resolved.quant else None) or quant_from_metadata(model.metadata)
    # The file name, not general.name: converters often leave a training-run name there
    # ("Smollm2 135M 8k Lc100K Mix1 Ep2"), while people named the file themselves.
    name = resolved.name if resolved and resolved.name else path.stem
    if quant and name.lower().endswith("." + quant.lower()):
        name = name[: -len(quant) - 1]
    plan = engine.plan
    return ModelInfo(name=name, quant=quant, path=path, size_bytes=path.stat().st_size,
                     layers_on_gpu=plan.layers_on_gpu, n_layer=plan.n_layer, n_ctx=engine.n_ctx,
                     backend=build_backend(), offload=plan.reason)
