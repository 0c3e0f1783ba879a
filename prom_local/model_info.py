"""What a loaded model is, in the words people use: name, quant type, size, GPU layers, backend.

Plain data for the TUI's model panel (and anything else that shows a loaded Judge), derived from
the GGUF's metadata and the engine's offload plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .engine import build_backend
from .models import ResolvedModel

# llama.cpp's general.file_type enum -> the names people use (llama_ftype in llama.h).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
              23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
              29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0"}


def quant_from_metadata(metadata: dict[str, str]) -> str | None:
    ftype = metadata.get("general.file_type")
    if ftype is None:
        return None
    return FILE_TYPES.get(int(ftype), ftype) if ftype.isdigit() else ftype


def human_size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


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

    @property
    def size(self) -> str:
        return human_size(self.size_bytes)


def describe_judge(judge, resolved: ResolvedModel | None = None) -> ModelInfo:
    """ModelInfo of a loaded `Judge`; `resolved` (from the store) supplies the store name and quant."""
    model = judge.model
    path = Path(model.path)
    quant = (resolved.quant if resolved and resolved.quant else None) or quant_from_metadata(model.metadata)
    # The file name, not general.name: converters often leave a training-run name there
    # ("Smollm2 135M 8k Lc100K Mix1 Ep2"), while people named the file themselves.
    name = resolved.name if resolved and resolved.name else path.stem
    if quant and name.lower().endswith("." + quant.lower()):
        name = name[: -len(quant) - 1]
    plan = judge.engine.plan
    return ModelInfo(name=name, quant=quant, path=path, size_bytes=path.stat().st_size,
                     layers_on_gpu=plan.layers_on_gpu, n_layer=plan.n_layer, n_ctx=judge.engine.n_ctx,
                     backend=build_backend(), offload=plan.reason)
