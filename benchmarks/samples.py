#!/usr/bin/env python
"""What --samples 3 costs over --samples 1: the same judge records, in one invocation.

Each record's prompt is decoded once and its KV copied to the other samples' sequences, so N
samples should cost one prompt plus N generations decoded side by side. The issue's target: N=3 at
most 1.6x the time of N=1 on CPU records whose prompt dominates (long Korean judge prompts, short
feedback). Runs, each in its own child process (model load not timed), alternating order per round:
  n1  - the papers' sampling (temperature 1.0, top-p 0.9, repeat penalty 1.03), 1 sample per record
  n3  - the same, 3 samples per record (--protocol paper)
both with the same --parallel (default 3: what n3 needs), records graded through Judge.grade_stream
as `score` does. Prints seconds, records/min, prompt tokens computed vs reused, generated tokens,
the ratio n3/n1 per round, and the load average around each run (the machine may be shared).

    python benchmarks/samples.py                       # SmolLM2-135M (tests' asset), bench-ko.jsonl
    python benchmarks/samples.py --max-tokens 128 --rounds 3
    python benchmarks/samples.py --model prometheus-ko.Q4_K_M.gguf --gpu-layers all
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECORDS = ROOT / "prom_local" / "data" / "bench-ko.jsonl"


def child(args: argparse.Namespace) -> None:
    from prom_local import EngineConfig, Judge, SamplingParams
    from prom_local.inputs import read_records

    records = list(read_records(args.records))[: args.limit]
    sampling = SamplingParams(temperature=1.0, top_p=0.9, repeat_penalty=1.03, seed=args.seed,
                              max_tokens=args.max_tokens, n=args.samples)
    config = EngineConfig(n_ctx=args.ctx, n_parallel=args.parallel, gpu_layers=args.gpu_layers,
                          n_threads=args.threads)
    with Judge(args.model, engine=config, sampling=sampling) as judge:
        load = os.getloadavg()[0]
        cpu0, start = time.process_time(), time.perf_counter()
        grades = list(judge.grade_stream(records))
        seconds = time.perf_counter() - start
        stats = judge.engine.stats
        print(json.dumps({
            "samples": args.samples, "records": len(grades), "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu0, "load_before": load, "load_after": os.getloadavg()[0],
            "prompt_tokens": stats.prompt_tokens, "computed_prompt_tokens": stats.prompt_tokens - stats.reused_tokens,
            "forked_tokens": stats.forked_tokens, "generated": sum(g.completion_tokens for g in grades),
            "errors": sum(g.error is not None for g in grades),
            "scores": [g.extra.get("scores", [g.score]) for g in grades],
        }))


def run_child(args: argparse.Namespace, samples: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--samples", str(samples), "--model", str(args.model),
           "--records", str(args.records), "--limit", str(args.limit), "--max-tokens", str(args.max_tokens),
           "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--gpu-layers", str(args.gpu_layers),
           "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: the tests' SmolLM2-135M)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--limit", type=int, default=8, help="records to grade")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all; use 1 on a "
                        "shared machine, where spinning threads make the times swing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from assets import smollm2_shipped_gguf
        args.model = smollm2_shipped_gguf()
    if args.child:
        child(args)
        return

    print(f"model {args.model.name}, {args.limit} records of {args.records.name}, max tokens {args.max_tokens}, "
          f"parallel {args.parallel}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'round':>5} {'run':>4} {'seconds':>8} {'cpu s':>7} {'rec/min':>8} {'prompt computed':>16} "
          f"{'reused':>7} {'generated':>9} {'load':>11}")
    ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        order = (1, 3) if r % 2 == 0 else (3, 1)
        got = {}
        for samples in order:
            res = got[samples] = run_child(args, samples)
            print(f"{r + 1:>5} {'n' + str(samples):>4} {res['seconds']:>8.2f} {res['cpu_seconds']:>7.2f} "
                  f"{res['records'] / res['seconds'] * 60:>8.1f} {res['computed_prompt_tokens']:>16} "
                  f"{res['prompt_tokens'] - res['computed_prompt_tokens']:>7} {res['generated']:>9} "
                  f"{res['load_before']:>5.2f}>{res['load_after']:<5.2f}")
        ratios.append(got[3]["seconds"] / got[1]["seconds"])
        cpu_ratios.append(got[3]["cpu_seconds"] / got[1]["cpu_seconds"])
        print(f"{'':>5} n3/n1 ratio: time {ratios[-1]:.2f}, CPU {cpu_ratios[-1]:.2f}  (generated tokens "
              f"{got[3]['generated'] / max(1, got[1]['generated']):.2f})")
    # On a shared machine wall time swings with the others' load; with --threads 1 the process's
    # CPU time counts the work itself (no spinning threads), so both are shown.
    print(f"time ratios: {', '.join(f'{x:.2f}' for x in ratios)}; CPU ratios: "
          f"{', '.join(f'{x:.2f}' for x in cpu_ratios)}; target <= 1.6")


if __name__ == "__main__":
    main()
