"""Quantize a 16-bit GGUF with llama.cpp's own quantizer: `llama_model_quantize` from llama-cpp-python,
i.e. the same llama.cpp build that later runs the model.

The call runs in a child process (`_worker`, also `python -m convert.quantize SRC DST TYPE THREADS`). A C call cannot be
interrupted by Ctrl-C, may abort the whole process on a malformed file, and its memory high-water
mark would be mixed with ours; in a child it can be stopped, its failure is a message, and its peak
RSS is its own. The child streams llama.cpp's log, whose `[ i/ n]` lines drive the progress bar.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prom_local.engine.model_info import ftype_table

from ._proc import run_child, worker_command

# Types that llama.cpp refuses (or quantizes badly) without an importance matrix.
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "Q2_K_S"}

# Types whose quantization ignores an importance matrix (llama.cpp rounds them without weights).
IMATRIX_IGNORED = {"F32", "F16", "BF16", "Q8_0"}

# Approximate bits per weight of each type on a Llama-3-8B, for disk-space checks only.
BITS_PER_WEIGHT = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.55,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5.0, "Q4_0": 4.55, "IQ4_NL": 4.55,
    "IQ4_XS": 4.3, "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "IQ3_M": 3.7, "IQ3_S": 3.5,
    "IQ3_XS": 3.3, "IQ3_XXS": 3.1, "Q2_K": 3.4, "Q2_K_S": 3.0, "IQ2_M": 2.9, "IQ2_S": 2.7,
    "IQ2_XS": 2.5, "IQ2_XXS": 2.3, "IQ1_M": 2.0, "IQ1_S": 1.8, "TQ1_0": 1.7, "TQ2_0": 2.1,
}

_PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


def parse_quant(name: str) -> str:
    """'q4_k_m' -> 'Q4_K_M'; unknown names are a user error listing the known ones."""
    from prom_local.errors import ConvertError

    wanted = name.strip().upper()
    table = ftype_table()
    if wanted not in table:
        raise ConvertError(f"--quant {name!r}: not a llama.cpp quantization type "
                           f"(known: {', '.join(sorted(table))})")
    if wanted in NEEDS_IMATRIX:
        raise ConvertError(f"--quant {wanted}: llama.cpp needs an importance matrix for this type, and "
                           "convert does not offer these very low-bit types (not even with --imatrix-data); "
                           "pick e.g. Q4_K_M, Q5_K_M, Q6_K or Q8_0")
    return wanted


def estimate_bytes(f16_bytes: int, quant: str) -> int:
    """Rough output size (with headroom) from the 16-bit file's size."""
    bpw = BITS_PER_WEIGHT.get(quant, 16.0)
    return int(f16_bytes * bpw / 16.0 * 1.1) + (64 << 20)


@dataclass
class QuantizeResult:
    seconds: float
    peak_rss_bytes: int | None


def quantize(src: Path, dst: Path, quant: str, *, threads: int | None = None, imatrix: Path | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> QuantizeResult:
    """Write `dst` (atomically: via dst.partial) from the GGUF `src`, guided by an importance matrix
    file when given. Raises ConvertError naming `src` with llama.cpp's own reason when it fails (a
    truncated or corrupt input, for instance)."""
    from prom_local.errors import ConvertError

    partial = dst.with_name(dst.name + ".partial")
    partial.unlink(missing_ok=True)
    cmd = worker_command("convert.quantize", str(src), str(partial), quant, str(threads or 0),
                         str(imatrix) if imatrix else "")
    used_imatrix = False

    def on_line(line: str) -> None:
        nonlocal used_imatrix
        used_imatrix = used_imatrix or "have importance matrix data" in line
        m = _PROGRESS.match(line)
        if m and on_progress is not None:
            on_progress(int(m.group(1)), int(m.group(2)))

    run = run_child(cmd, partial=partial, on_line=on_line)
    status, log = run.status, run.tail
    if status == 0 and imatrix and not used_imatrix:
        status = -1
        log.append("llama.cpp did not report using the importance matrix")
    if status != 0:
        partial.unlink(missing_ok=True)
        reason = _reason(log)
        raise ConvertError(f"quantizing {src} to {quant} failed"
                           + (f": {reason}" if reason else f" (exit status {status})"))
    partial.replace(dst)
    return QuantizeResult(run.seconds, run.peak_rss_bytes)


def _reason(log: list[str]) -> str:
    text = [line.strip() for line in log]
    picked = [t for t in text if "failed" in t or "error" in t.lower()] or text[-3:]
    return " / ".join(dict.fromkeys(t for t in picked if t))[:1000]


def _worker(argv: list[str]) -> int:
    src, dst, quant, threads = argv[0], argv[1], argv[2], int(argv[3])
    imatrix_path = argv[4] if len(argv) > 4 else ""
    import ctypes

    import llama_cpp as ll

    @ll.llama_log_callback
    def log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        os.write(2, text)

    ll.llama_log_set(log, ctypes.c_void_p(0))
    ll.llama_backend_init()
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftype_table()[quant]
    params.nthread = threads
    keep = []  # the arrays the C side reads must outlive the call
    if imatrix_path:
        from convert.imatrix import load

        values = load(Path(imatrix_path))
        entries = (ll.llama_model_imatrix_data * (len(values) + 1))()  # NULL-name terminated
        for i, (name, vec) in enumerate(sorted(values.items())):
            keep += [name.encode(), vec]
            entries[i].name = keep[-2]
            entries[i].data = vec.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = vec.size
        params.imatrix = entries
        keep.append(entries)
    rc = ll.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
