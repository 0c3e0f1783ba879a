#!/usr/bin/env python
"""`serve --ray`: a batch's throughput on two engines against one, and what the front adds to a
request, in one invocation on this machine (SmolLM2, one thread per engine).

Systems, each a fresh `prom-local serve` on loopback:
  ray2   `serve --ray local --actors 2 --threads 1 --parallel 1`: two engines of one thread
  ray1   `serve --ray local --actors 1 --threads 1 --parallel 1`: one engine, through the front
  local  `serve --threads 1 --parallel 1`: the same engine in-process (no front, no Ray)

Batch: N `/v1/grade` lines (the distinct-instruction workload of throughput.py, short records) in
one Batch API job with --batch-slots equal to the engines' slots; clock from create to completed,
model load excluded. Latency: then, K requests one after another to /v1/grade with one short record
(the same one each time, so both sides reuse its prompt alike); median and p90. Rounds alternate
the systems' order, since these machines drift.

    python benchmarks/serve_ray.py --lines 16 --requests 12 --rounds 2
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import smollm2_gguf  # noqa: E402
from helpers import short_record  # noqa: E402
from serve_support import ServerProcess  # noqa: E402
from throughput import build_workloads  # noqa: E402

KEY = "key-bench-1a9"
ENGINE = ["--threads", "1", "--parallel", "1", "--ctx", "2048", "--gpu-layers", "0"]
SYSTEMS = {"ray2": ["--ray", "local", "--actors", "2", "--batch-slots", "2"],
           "ray1": ["--ray", "local", "--actors", "1", "--batch-slots", "1"],
           "local": ["--batch-slots", "1"]}


def batch_seconds(http: httpx.Client, records: list[dict]) -> float:
    data = "".join(json.dumps({"custom_id": r["id"], "method": "POST", "url": "/v1/grade", "body": r},
                              ensure_ascii=False) + "\n" for r in records).encode()
    file_id = http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}).json()["id"]
    started = time.monotonic()
    batch_id = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/grade",
                                              "completion_window": "24h"}).json()["id"]
    while (shown := http.get(f"/v1/batches/{batch_id}").json())["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)   # poll interval
    assert shown["status"] == "completed" and shown["request_counts"]["failed"] == 0, shown
    return time.monotonic() - started


def latencies(http: httpx.Client, n: int) -> list[float]:
    record, out = short_record(1), []
    http.post("/v1/grade", json=record)   # warm: the prompt is in the cache on both sides
    for _ in range(n):
        started = time.monotonic()
        reply = http.post("/v1/grade", json=record)
        out.append(time.monotonic() - started)
        assert reply.status_code == 200, reply.text
    return out


def run(system: str, records: list[dict], args, tmp: Path) -> dict:
    keys = tmp / "keys.txt"
    keys.write_text(f"bench={KEY}\n")
    server = ServerProcess("-m", str(smollm2_gguf()), *ENGINE, "--max-tokens", str(args.max_tokens),
                           "--api-key-file", str(keys), "--data-dir", str(tmp / f"data-{system}-{time.time_ns()}"),
                           *SYSTEMS[system])
    try:
        server.wait_ready(600)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as http:
            seconds = batch_seconds(http, records)
            times = latencies(http, args.requests)
    finally:
        server.stop()
    return {"system": system, "batch_s": seconds, "lines_per_min": 60 * len(records) / seconds,
            "p50_ms": 1000 * statistics.median(times), "p90_ms": 1000 * sorted(times)[int(0.9 * (len(times) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=16)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    records = build_workloads(args.lines, 1, "short")["distinct"]
    results: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            order = list(SYSTEMS) if round_no % 2 == 0 else list(reversed(SYSTEMS))
            for system in order:
                result = run(system, records, args, Path(tmp))
                results[system].append(result)
                print(f"round {round_no + 1} {system:5}: batch {result['batch_s']:6.1f} s "
                      f"({result['lines_per_min']:5.1f} lines/min); /v1/grade p50 {result['p50_ms']:6.0f} ms, "
                      f"p90 {result['p90_ms']:6.0f} ms", flush=True)

    def mean(system: str, key: str) -> float:
        return statistics.mean(r[key] for r in results[system])

    print(f"\n{args.lines} lines, {args.max_tokens} new tokens, {args.rounds} round(s), SmolLM2, one thread per engine")
    print(f"batch throughput, 2 engines vs 1: {mean('ray2', 'lines_per_min') / mean('ray1', 'lines_per_min'):.2f}x "
          f"({mean('ray2', 'lines_per_min'):.1f} vs {mean('ray1', 'lines_per_min'):.1f} lines/min)")
    print(f"batch throughput, 1 engine through the front vs in-process: "
          f"{mean('ray1', 'lines_per_min') / mean('local', 'lines_per_min'):.2f}x")
    print(f"/v1/grade latency through --ray vs in-process (one engine): p50 {mean('ray1', 'p50_ms'):.0f} vs "
          f"{mean('local', 'p50_ms'):.0f} ms (front adds {mean('ray1', 'p50_ms') - mean('local', 'p50_ms'):+.0f} ms)")


if __name__ == "__main__":
    main()
