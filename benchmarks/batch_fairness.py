#!/usr/bin/env python
"""Fair turns in the Batch API, measured: how long a key's 1-line batch waits behind another key's queue.

A real `prom-local serve` (SmolLM2, --parallel 2: batch work holds one slot) with two keys. Per round:
alice's 1-line chat batch alone (her latency from create to completed, polled every 20 ms), then bob
queues 4 batches of 8 chat lines, and once his first line has finished alice creates the same 1-line
batch again. Her extra wait (second latency minus the first) is what bob's queue cost her; the bound
says it stays within about one of bob's line-times (his lines' mean duration, measured meanwhile).

    PYTHONPATH=. python benchmarks/batch_fairness.py --rounds 3
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

from conftest import smollm2_gguf  # noqa: E402
from serve_support import ServerProcess  # noqa: E402

KEYS = {"alice": "key-alice-4f1", "bob": "key-bob-8c2"}
NAME = "smol"


def lines(n: int, tag: str, tokens: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": NAME, "max_tokens": tokens, "messages": [{"role": "user", "content": f"Count to {i}."}]}}) + "\n"
        for i in range(n)).encode()


class Client:
    def __init__(self, url: str, who: str):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=60)

    def submit(self, data: bytes) -> str:
        file_id = self.http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}).json()["id"]
        return self.http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                   "completion_window": "24h"}).json()["id"]

    def get(self, batch_id: str) -> dict:
        return self.http.get(f"/v1/batches/{batch_id}").json()

    def wait(self, batch_id: str, until) -> dict:
        while not until(shown := self.get(batch_id)):
            time.sleep(0.02)   # poll interval
        return shown


def ended(shown: dict) -> bool:
    return shown["status"] in ("completed", "failed", "cancelled")


def one_line(alice: Client, tokens: int) -> float:
    started = time.monotonic()
    alice.wait(alice.submit(lines(1, "a", tokens)), ended)
    return time.monotonic() - started


def round_(alice: Client, bob: Client, tokens: int) -> dict:
    alone = one_line(alice, tokens)
    started = time.monotonic()
    queue = [bob.submit(lines(8, f"b{k}-", tokens)) for k in range(4)]
    bob.wait(queue[0], lambda s: s["request_counts"]["completed"] >= 1)
    behind = one_line(alice, tokens)
    done_then = sum(bob.get(b)["request_counts"]["completed"] for b in queue)
    for batch_id in queue:
        bob.wait(batch_id, ended)
    line_s = (time.monotonic() - started) / 32
    return {"alone_s": alone, "behind_s": behind, "extra_s": behind - alone, "bob_line_s": line_s,
            "bob_lines_done_when_alice_ended": done_then}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=8, help="max_tokens of every line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.txt"
        keys.write_text("".join(f"{n}={k}\n" for n, k in KEYS.items()))
        server = ServerProcess("-m", str(smollm2_gguf()), "--parallel", "2", "--ctx", "1024", "--gpu-layers", "0",
                               "--threads", "1", "--served-name", NAME, "--api-key-file", str(keys),
                               "--data-dir", str(Path(tmp) / "data"))
        try:
            server.wait_ready()
            alice, bob = Client(server.url, "alice"), Client(server.url, "bob")
            rounds = [round_(alice, bob, args.tokens) for _ in range(args.rounds)]
        finally:
            server.stop()
    for r in rounds:
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    print(f"median extra wait {statistics.median(r['extra_s'] for r in rounds):.3f} s, median bob line-time "
          f"{statistics.median(r['bob_line_s'] for r in rounds):.3f} s (of 32 lines queued ahead)")


if __name__ == "__main__":
    main()
