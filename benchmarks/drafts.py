#!/usr/bin/env python
"""Drafts from the prompt (--draft) off and on, on the built-in Korean records, in one invocation.

For each --parallel N, one engine (model load not timed) with the host prompt store on:
  cold  - every record graded once, drafts off: prompts computed (what a first `score` run costs);
  warm  - the same records again, drafts off and on in turn (--rounds times, alternating order so a
          drifting machine load favours neither): prompts are loaded back from the host store, so
          a warm pass is nearly all generation, the part drafts change.
The engine's drafts setting is switched between warm passes (Engine.draft), nothing else changes.
Prints wall time and the process's CPU time (on a shared machine the steadier measure of the work;
with --threads 1 it is the engine's compute), generated tokens, decode steps, drafts accepted per
verification step (a sequence's step that carried drafts) and the share accepted, generated tokens/s,
the ratios off/on of wall and CPU time,
and how many rows (text, score) were those of drafts off (greedy: all, but where the CPU's
lone-token rounding flips a near-tie; see docs/performance.md, "Drafts from the prompt").

    python benchmarks/drafts.py                                  # SmolLM2-135M, 8 records, ~6-10 min on 2 cores
    python benchmarks/drafts.py --records 4 --parallel 1        # quicker
    python benchmarks/drafts.py --model models/prometheus-ko/prometheus-ko.Q4_K_M.gguf --gpu-layers all
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from prom_local import EngineConfig, Judge, SamplingParams  # noqa: E402
from prom_local.diagnostics.bench import bench_records  # noqa: E402


def one_pass(judge: Judge, records, draft: int) -> dict:
    engine = judge.engine
    engine.draft = min(draft, engine.n_batch // engine.n_parallel - 1)
    s = engine.stats
    before = (s.steps, s.drafted_tokens, s.accepted_tokens, s.draft_rows)
    start, cpu = time.perf_counter(), time.process_time()
    grades = list(judge.grade_stream(records))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    steps, drafted, accepted, rows = (a - b for a, b in zip(
        (s.steps, s.drafted_tokens, s.accepted_tokens, s.draft_rows), before))
    return {"wall": wall, "cpu": cpu, "steps": steps, "drafted": drafted, "accepted": accepted, "rows": rows,
            "generated": sum(g.completion_tokens for g in grades),
            "rows_out": [(g.id, g.output, g.score, g.probabilities) for g in grades]}


def line(n: int, kind: str, draft: int, r: dict, base: dict) -> str:
    per_row = f"{r['accepted'] / r['rows']:.2f}" if r["rows"] else "-"
    share = f"{r['accepted'] / r['drafted']:.0%}" if r["drafted"] else "-"
    # Rows whose text and score are those of drafts off: greedy with drafts is the model's own, up to
    # the CPU's lone-token rounding (docs/performance.md, "Drafts from the prompt"), which can flip a near-tie.
    same = f"{sum(a[:3] == b[:3] for a, b in zip(r['rows_out'], base['rows_out']))}/{len(r['rows_out'])}"
    return (f"| {n} | {kind} | {draft or 'off'} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['generated']} | {r['steps']} | "
            f"{per_row} | {share} | {r['generated'] / r['wall']:.1f} | {base['wall'] / r['wall']:.2f}x | "
            f"{base['cpu'] / r['cpu']:.2f}x | {same} |")


def main() -> None:
    from assets import smollm2_shipped_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M, the tests' asset)")
    ap.add_argument("--records", type=int, default=8, help="built-in Korean records (8 distinct)")
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--draft", type=int, default=8, help="drafts per step when on")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--gpu-layers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=1, help="warm off/on pairs per --parallel")
    args = ap.parse_args()
    model = args.model or str(smollm2_shipped_gguf())
    records = bench_records(args.records)
    print(f"{args.records} built-in Korean records, max_tokens {args.max_tokens}, model {Path(model).name}, "
          f"{args.threads} threads, gpu layers {args.gpu_layers}, load average {os.getloadavg()[0]:.1f}")
    print("| N | pass | drafts | wall s | CPU s | generated | decode steps | accepted/verification | accepted | "
          "gen tok/s | speed vs off | CPU off/on | rows as off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.parallel:
        config = EngineConfig(n_ctx=2560, gpu_layers=args.gpu_layers, n_threads=args.threads, n_parallel=n,
                              draft=0, host_cache_mib=2048)
        with Judge(model, engine=config, sampling=SamplingParams(max_tokens=args.max_tokens)) as judge:
            cold = one_pass(judge, records, 0)
            print(line(n, "cold", 0, cold, cold), flush=True)
            for rnd in range(args.rounds):
                order = [0, args.draft] if rnd % 2 == 0 else [args.draft, 0]
                got = {d: one_pass(judge, records, d) for d in order}
                for d in (0, args.draft):
                    print(line(n, f"warm {rnd + 1}", d, got[d], got[0]), flush=True)


if __name__ == "__main__":
    main()
