#!/usr/bin/env python
"""How much a quantized KV cache changes a judge's verdicts: f16 against each type, same records, greedy.

For each model (SmolLM2-135M from the tests' assets, and the tiny random Llama 3 GGUF the tests
convert, or --model paths) and each KV cache type, grades the built-in Korean judge records with
prom-local's Judge on the CPU and compares with the f16 cache:

  same score   share of records whose score equals the f16 run's (a record without a score on
               either side counts as the same only when both have none)
  mean KL      mean KL(P_f16 || P_type) of the score distribution P(1..5) (the forced-score probe)
  wall s       the run's time (one invocation: ratios between rows are comparable)

"f16" is run with flash attention off and "f16 + FA" with it on (prom-local's `auto` on the CPU); a
quantized V turns it on, so that row tells the flash-attention part of the difference from the
quantized part (benchmarks/flash_fidelity.py measures flash attention alone, with its spread).

    python benchmarks/kv_fidelity.py                        # SmolLM2 + tiny Llama 3, 8 records, 64 tokens
    python benchmarks/kv_fidelity.py --records 16 --max-tokens 128 --model prometheus-ko.Q4_K_M.gguf

The tiny Llama 3 needs torch and transformers (the `convert` extra); without them it is skipped.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (label, cache type of K and V, flash attention: None = prom-local's default for the type)
SETTINGS = [("f16", "f16", False), ("f16 + FA", "f16", True), ("q8_0", "q8_0", None), ("q4_0", "q4_0", None)]


def tiny_llama3(folder: Path) -> Path | None:
    """The tests' tiny random Llama 3, converted by `prom-local convert` to Q8_0 (as tests/tiny_llama.py)."""
    try:
        from tiny_llama import build_tiny_llama3
        checkpoint = build_tiny_llama3(folder / "hf")
    except ImportError as exc:
        print(f"tiny Llama 3 skipped: {exc}", file=sys.stderr)
        return None
    store = folder / "models"
    subprocess.run([sys.executable, "-m", "prom_local", "convert", str(checkpoint), "--out", str(store),
                    "--name", "tiny-llama3", "--quant", "Q8_0"], cwd=ROOT, check=True, capture_output=True)
    return next(store.rglob("*.Q8_0.gguf"))


def models_to_measure(given: list[str] | None, folder: Path) -> list[tuple[str, Path]]:
    """(name, GGUF) of --model paths, or SmolLM2 as shipped and the tiny Llama 3 built in `folder`."""
    if given:
        return [(Path(m).name, Path(m)) for m in given]
    from assets import smollm2_shipped_gguf
    models = [("SmolLM2-135M Q4_1", smollm2_shipped_gguf())]
    tiny = tiny_llama3(folder)
    if tiny is not None:
        models.append(("tiny Llama 3 Q8_0", tiny))
    return models


def grade(model: Path, cache: str, flash: bool | None, args) -> tuple[list, float]:
    from prom_local import EngineConfig, Judge, SamplingParams
    from prom_local.diagnostics.bench import bench_records

    engine = EngineConfig(gpu_layers=0, n_threads=args.threads, n_parallel=args.parallel, cache_type_k=cache,
                          cache_type_v=cache, flash_attn=flash, need_tokens=None, n_ctx=args.ctx)
    start = time.perf_counter()
    with Judge(model, engine=engine, sampling=SamplingParams(max_tokens=args.max_tokens)) as judge:
        grades = list(judge.grade_stream(bench_records(args.records)))
    return grades, time.perf_counter() - start


def kl(p, q) -> float:
    eps = 1e-9
    return sum(a * math.log((a + eps) / (b + eps)) for a, b in zip(p, q) if a > 0)


def compare(base: list, other: list) -> tuple[float, float | None]:
    same = sum(a.score == b.score for a, b in zip(base, other)) / len(base)
    kls = [kl(a.probabilities, b.probabilities) for a, b in zip(base, other)
           if a.probabilities is not None and b.probabilities is not None]
    return same, (sum(kls) / len(kls) if kls else None)


def run_model(name: str, model: Path, args) -> list[str]:
    lines, base = [], None
    for label, cache, flash in SETTINGS:
        grades, wall = grade(model, cache, flash, args)
        base = base or grades
        same, mean_kl = compare(base, grades)
        scored = sum(g.score is not None for g in grades)
        kl_text = "-" if mean_kl is None else f"{mean_kl:.5f}"
        lines.append(f"| {name} | {label} | {same:.0%} | {kl_text} | {scored}/{len(grades)} | {wall:.1f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="GGUF to measure (repeatable; default: SmolLM2 and "
                    "the tiny Llama 3)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    print(f"{args.records} built-in Korean judge records, greedy, --max-tokens {args.max_tokens}, "
          f"--parallel {args.parallel}, CPU, {args.threads} threads\n")
    print("| model | KV cache | same score as f16 | mean KL of P(1..5) | scored | wall s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models_to_measure(args.model, Path(tmp)):
            run_model(name, path, args)


if __name__ == "__main__":
    main()
