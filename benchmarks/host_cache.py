#!/usr/bin/env python
"""The host prompt store (`--host-cache-mib`) on and off, on the same records in one process.

Instructions graded in turn (`repeat`: several responses per instruction, round-robin) at
--parallel N: with one sequence, each instruction's prompt was replaced by the next one's before
it comes back, so without the store it is computed again; with the store it is loaded back.
`distinct` (no instruction repeats) shows what the store costs when it cannot help (saving states
that are never used). For each (workload, N, round) both settings run on a fresh engine, the order
alternating per round so drifting machine load favours neither; model load is not timed.

Prints records/min, CPU seconds per record (this process: user + system, all threads), the share
of prompt tokens reused, what the store held, the ratio on/off, and whether the grades were the
same (they must be: a loaded state is the same KV).

    python benchmarks/host_cache.py                     # SmolLM2-135M (tests' asset), ~7 min on 2 cores
    python benchmarks/host_cache.py --rounds 2          # both orders of on/off, ~13 min
    python benchmarks/host_cache.py --model models/prometheus-ko/prometheus-ko.Q4_K_M.gguf --gpu-layers all
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from throughput import build_workloads  # noqa: E402

from prom_local import EngineConfig, Judge, SamplingParams  # noqa: E402
from prom_local.judging.records import record_from_mapping  # noqa: E402


def run(model: str, rows: list[dict], *, parallel: int, mib: int, args) -> dict:
    records = [record_from_mapping(row, line=i + 1) for i, row in enumerate(rows)]
    engine = EngineConfig(n_ctx=args.ctx, gpu_layers=args.gpu_layers, n_threads=args.threads,
                          n_parallel=parallel, host_cache_mib=mib)
    with Judge(model, engine=engine, sampling=SamplingParams(max_tokens=args.max_tokens)) as judge:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        grades = list(judge.grade_stream(records))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stats, store = judge.engine.stats, judge.engine.cache.store
        return {"wall": wall, "cpu": cpu, "n": len(grades),
                "reused": stats.reused_tokens / max(1, stats.prompt_tokens),
                "stored_mib": (store.nbytes / 2**20) if store else 0.0,
                "loads": store.loads if store else 0,
                "grades": [(g.id, g.output, g.score) for g in grades]}


def main() -> None:
    from assets import smollm2_shipped_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M, the tests' asset)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--per-instruction", type=int, default=2)
    ap.add_argument("--length", default="short", choices=["short", "card"])
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--mib", type=int, default=1024, help="the store's size when on")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workloads", nargs="+", default=["repeat", "distinct"])
    args = ap.parse_args()
    model = args.model or str(smollm2_shipped_gguf())
    workloads = build_workloads(args.records, args.per_instruction, args.length)

    print(f"{args.records} records, {args.length} length, max_tokens {args.max_tokens}, model {Path(model).name}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| workload | N | round | store | records/min | on/off | CPU s/record | prompt reused | "
          "stored MiB (loads) | same grades |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.workloads:
        for parallel in args.parallel:
            for rnd in range(args.rounds):
                order = [0, args.mib] if rnd % 2 == 0 else [args.mib, 0]
                got = {mib: run(model, workloads[name], parallel=parallel, mib=mib, args=args) for mib in order}
                off, on = got[0], got[args.mib]
                rate = {mib: r["n"] / r["wall"] * 60 for mib, r in got.items()}
                same = on["grades"] == off["grades"]
                for mib in (0, args.mib):
                    r = got[mib]
                    ratio = f"{rate[mib] / rate[0]:.2f}x"
                    print(f"| {name} | {parallel} | {rnd + 1} | {'on' if mib else 'off'} | {rate[mib]:.1f} | {ratio} | "
                          f"{r['cpu'] / r['n']:.2f} | {r['reused']:.0%} | {r['stored_mib']:.0f} ({r['loads']}) | "
                          f"{'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
