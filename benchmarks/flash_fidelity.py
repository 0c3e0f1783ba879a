#!/usr/bin/env python
"""What flash attention does to a judge's verdicts on the CPU, next to the spread prom-local has without it.

For each model (SmolLM2-135M as shipped, and the tiny random Llama 3 the tests convert, or --model
paths) grades the same Korean judge records (benchmarks/throughput.py's `repeat` workload: several
responses per instruction, so prefixes are shared and reused) with prom-local's Judge, greedy, at
flash attention off and on, --parallel 1, 2 and 4, each twice in one engine: `cold` (the first
pass; prefixes shared between records still come from the cache) and `warm` (the same records again:
every prompt but its last tokens comes from the prefix cache or the host store). Each row is compared
with the reference run, flash attention off, --parallel 1, cold:

  same score   share of records whose score equals the reference's
  same text    share whose generated text is identical
  mean KL      mean KL(P_ref || P_row) of the score distribution P(1..5) (the forced-score probe)
  reused       prompt tokens taken from the cache in that pass
  vs own cold  share of records, of the same setting's --parallel 1 cold run, with bit-identical
               output and probabilities (the promise docs/exactness.md states)
  errors       rows without a grade (a record too long for --ctx would make every column meaningless)

    python benchmarks/flash_fidelity.py                     # SmolLM2 + tiny Llama 3, 8 records
    python benchmarks/flash_fidelity.py --records 12 --max-tokens 96 --model prometheus-ko.Q4_K_M.gguf
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from kv_fidelity import compare, models_to_measure  # noqa: E402


def passes(model: Path, flash: bool, parallel: int, records: list, args) -> dict[str, tuple[list, int, float]]:
    """Two passes over the records in one engine -> {"cold": (grades, reused, s), "warm": ...}."""
    from prom_local import EngineConfig, Judge, SamplingParams

    engine = EngineConfig(gpu_layers=args.gpu_layers, n_threads=args.threads, n_parallel=parallel, flash_attn=flash,
                          n_ctx=args.ctx)
    out = {}
    with Judge(model, engine=engine, sampling=SamplingParams(max_tokens=args.max_tokens)) as judge:
        for name in ("cold", "warm"):
            start = time.perf_counter()
            grades = list(judge.grade_stream(records))
            out[name] = (grades, sum(g.extra.get("reused_prompt_tokens", 0) for g in grades),
                         time.perf_counter() - start)
    return out


def identical(a, b) -> bool:
    return a.output == b.output and a.score == b.score and a.probabilities == b.probabilities


def row(name: str, label: str, ref: list, own_cold: list, grades: list, reused: int, wall: float) -> str:
    n = len(ref)
    same, mean_kl = compare(ref, grades)   # kv_fidelity's: the same columns against its reference
    return (f"| {name} | {label} | {same:.0%} "
            f"| {sum(a.output == b.output for a, b in zip(ref, grades)) / n:.0%} "
            f"| {float('nan') if mean_kl is None else mean_kl:.2e} | {reused:,} "
            f"| {sum(identical(a, b) for a, b in zip(own_cold, grades))}/{n} | {sum(g.error is not None for g in grades)} "
            f"| {wall:.1f} |")


def run_model(name: str, model: Path, records: list, args) -> None:
    ref = own_cold = None
    for flash in (False, True):
        for parallel in args.parallel:
            result = passes(model, flash, parallel, records, args)
            for pass_name, (grades, reused, wall) in result.items():
                if ref is None:
                    ref = grades
                if parallel == args.parallel[0] and pass_name == "cold":
                    own_cold = grades
                label = f"FA {'on' if flash else 'off'}, --parallel {parallel}, {pass_name}"
                print(row(name, label, ref, own_cold, grades, reused, wall), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="GGUF (repeatable; default: SmolLM2 and the tiny Llama 3)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--per-instruction", type=int, default=2)
    ap.add_argument("--length", choices=["short", "card"], default="card")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--ctx", type=int, default=3072, help="context per sequence (the card-length records need ~2,400 tokens with SmolLM2)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--gpu-layers", type=int, default=0, help="0: the CPU (default); -1: every layer on the GPU")
    args = ap.parse_args()
    from throughput import build_workloads
    from prom_local.judging.records import record_from_mapping

    rows = build_workloads(args.records, args.per_instruction, args.length)["repeat"]
    records = [record_from_mapping(r, line=i + 1) for i, r in enumerate(rows)]
    print(f"{len(records)} Korean judge records ({args.length}, {args.per_instruction} responses per instruction), "
          f"greedy, --max-tokens {args.max_tokens}, {'CPU' if args.gpu_layers == 0 else 'GPU layers ' + str(args.gpu_layers)}, {args.threads} threads; reference: FA off, "
          f"--parallel {args.parallel[0]}, cold\n")
    print("| model | run | same score | same text | mean KL of P(1..5) | reused | vs own cold (bit-identical) | errors | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models_to_measure(args.model, Path(tmp)):
            run_model(name, path, records, args)

if __name__ == "__main__":
    main()
