#!/usr/bin/env python
"""Interactive /v1/grade latency on `prom-local serve` with and without a Batch API job running, in
one invocation on one server process (127.0.0.1, a port the OS picked).

What it measures: one person grading one record at a time (as the TUI or `grade --server` does):
--requests sequential POST /v1/grade calls, each timed from send to answer.
  idle    no batch on the server (the baseline);
  batch   a batch of --batch-lines /v1/grade lines was submitted just before and is in progress
          during every request (the script checks it is still running after the last one).
Rounds alternate the two phases, so drifting load on the machine favours neither. Printed: p50,
p95 and max latency per phase, their ratio batch/idle, and the batch lines that finished during
the batch phase (the batch is not starved). The batch is cancelled at the end of its phase.

The server's sharing rule (serve/batches/runner.py): batch work holds at most --batch-slots
sequences (default --parallel minus one) and starts a line only while fewer than --parallel
sequences are admitted; so with --parallel 2 an interactive request always finds a slot free.
Pass --batch-slots 2 to see what taking every slot costs instead.

    python benchmarks/batch_interactive.py                      # SmolLM2, --parallel 2
    python benchmarks/batch_interactive.py --parallel 4 --rounds 3 --batch-slots 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import short_record  # noqa: E402
from serve_support import ServerProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def interactive(url: str, n: int, offset: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        response = httpx.post(url + "/v1/grade", json=short_record(1000 + offset + i), timeout=600)
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def start_batch(url: str, lines: int, offset: int) -> str:
    data = "".join(json.dumps({"custom_id": f"b{offset + i}", "method": "POST", "url": "/v1/grade",
                               "body": short_record(offset + i)}, ensure_ascii=False) + "\n" for i in range(lines))
    uploaded = httpx.post(url + "/v1/files", data={"purpose": "batch"},
                          files={"file": ("in.jsonl", data.encode(), "application/jsonl")}, timeout=60).json()
    batch = httpx.post(url + "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/grade",
                                                  "completion_window": "24h"}, timeout=60).json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the batch did not start")
        time.sleep(0.05)   # poll: wait until batch lines are really decoding
    return batch["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF (default: the SmolLM2 test model)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--batch-slots", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--requests", type=int, default=6, help="interactive requests per phase and round")
    parser.add_argument("--batch-lines", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from assets import smollm2_shipped_gguf

    extra = ["--batch-slots", str(args.batch_slots)] if args.batch_slots else []
    with tempfile.TemporaryDirectory() as data:
        server = ServerProcess("-m", str(args.model or smollm2_shipped_gguf()), "--parallel", str(args.parallel),
                               "--ctx", "2048", "--gpu-layers", "0", "--max-tokens", str(args.max_tokens),
                               "--data-dir", data, *extra)
        try:
            server.wait_ready()
            url = server.url
            interactive(url, 1, 900)   # warm-up: first-request allocations are not the batch's fault
            phases: dict[str, list[float]] = {"idle": [], "batch": []}
            batch_done = []
            for round_no in range(args.rounds):
                order = ("idle", "batch") if round_no % 2 == 0 else ("batch", "idle")
                for phase in order:
                    offset = 100 * (round_no * 2 + (phase == "batch"))
                    if phase == "idle":
                        times = interactive(url, args.requests, offset)
                        phases["idle"] += times
                        print(f"round {round_no + 1} idle  s: " + " ".join(f"{t:.2f}" for t in times), flush=True)
                        continue
                    batch_id = start_batch(url, args.batch_lines, 10_000 + offset * 100)
                    before = httpx.get(f"{url}/v1/batches/{batch_id}").json()["request_counts"]["completed"]
                    times = interactive(url, args.requests, offset)
                    phases["batch"] += times
                    print(f"round {round_no + 1} batch s: " + " ".join(f"{t:.2f}" for t in times), flush=True)
                    state = httpx.get(f"{url}/v1/batches/{batch_id}").json()
                    if state["status"] != "in_progress":
                        print(f"warning: the batch ended ({state['status']}) before the interactive requests "
                              "did; raise --batch-lines", file=sys.stderr)
                    batch_done.append(state["request_counts"]["completed"] - before)
                    httpx.post(f"{url}/v1/batches/{batch_id}/cancel")
                    while httpx.get(f"{url}/v1/batches/{batch_id}").json()["status"] != "cancelled":
                        time.sleep(0.05)   # poll: its lines leave the engine before the next phase
        finally:
            server.stop()
    print(f"model {Path(args.model or smollm2_shipped_gguf()).name}  --parallel {args.parallel}  --batch-slots "
          f"{args.batch_slots or max(1, args.parallel - 1)}  --max-tokens {args.max_tokens}  "
          f"{args.requests} requests x {args.rounds} rounds per phase")
    print(f"{'phase':<8}{'n':>4}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for phase, times in phases.items():
        print(f"{phase:<8}{len(times):>4}{statistics.median(times):>9.2f}{percentile(times, 0.95):>9.2f}"
              f"{max(times):>9.2f}")
    idle, busy = phases["idle"], phases["batch"]
    print(f"ratio batch/idle: p50 {statistics.median(busy) / statistics.median(idle):.2f}x  "
          f"p95 {percentile(busy, 0.95) / percentile(idle, 0.95):.2f}x")
    print(f"batch lines finished during the batch phases: {batch_done} (the batch kept running)")


if __name__ == "__main__":
    main()
