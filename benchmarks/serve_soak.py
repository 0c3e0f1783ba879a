#!/usr/bin/env python
"""A bounded memory soak of `prom-local serve`: many rounds of mixed traffic against one server
process, its RSS after a warm-up and after every round.

One round = concurrent clients doing each of: a chat completion, a streamed chat read to its end,
a /v1/grade of one record, a /v1/grade of a list, and a streamed chat the client abandons after its
first token (the server must cancel its sequence). After each round the script waits until the
engine holds no sequence and nothing is admitted (GET /metrics), then reads the server's VmRSS
from /proc. The warm-up rounds come first, so what a first request allocates once (the weights
paged in, KV pages touched, per-slot samplers, import-time caches) is not counted as growth.

    python benchmarks/serve_soak.py                       # SmolLM2, 4 warm-up + 40 rounds, ~3 min on 2 cores
    python benchmarks/serve_soak.py --rounds 200 --parallel 8

Prints RSS after warm-up, after the last round, the largest, the host prompt store's share of it
(GET /metrics; bounded by --host-cache-mib, kept small here so it is full after the warm-up), and the
least-squares slope per 100 rounds of RSS less the store (a leak grows linearly with requests;
allocator noise does not).

With --tracemalloc the server runs inside this process instead (the same Service and app, under
uvicorn in a thread) with Python's tracemalloc on, and the script prints the source lines whose
live allocations grew most between the end of the warm-up and the end of the soak: where memory
that outlives requests is held.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from serve_support import ServerProcess  # noqa: E402

RUBRIC = {"criteria": "정확한가?", "score1_description": "틀림", "score2_description": "대부분 틀림",
          "score3_description": "절반", "score4_description": "대부분 맞음", "score5_description": "맞음"}


def record(i: int) -> dict:
    return {"id": f"s{i}", "instruction": f"{i} 더하기 {i}는?", "response": f"{2 * i}입니다.", "rubric": RUBRIC}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def store_mib(http: httpx.Client, url: str) -> float:
    """The host prompt store's bytes (GET /metrics), in MiB: memory the server holds on purpose,
    up to its --host-cache-mib, which a leak check subtracts from RSS."""
    for line in http.get(url + "/metrics").text.splitlines():
        if line.startswith("prom_local_host_cache_bytes "):
            return float(line.split()[1]) / 2**20
    return 0.0


def wait_idle(http: httpx.Client, url: str, timeout: float = 300) -> None:
    """Until the engine holds no sequence and the HTTP layer has none admitted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = http.get(url + "/metrics").text
        values = {}
        for line in text.splitlines():
            if line.startswith(("prom_local_slots_busy ", "prom_local_admitted_sequences ")):
                name, value = line.split()
                values[name] = float(value)
        if values and not any(values.values()):
            return
        time.sleep(0.05)  # poll interval
    raise TimeoutError("the server did not become idle")


def one_round(http: httpx.Client, url: str, k: int, max_tokens: int = 8) -> list[str]:
    """Five kinds of client at once; returns what each got (for the caller to check)."""
    chat = {"model": "soak", "max_tokens": max_tokens, "temperature": 0}

    def complete() -> str:
        body = {**chat, "messages": [{"role": "user", "content": f"Say the number {k}."}]}
        return http.post(url + "/v1/chat/completions", json=body).raise_for_status().json()["choices"][0]["finish_reason"]

    def streamed() -> str:
        body = {**chat, "stream": True, "messages": [{"role": "user", "content": f"Count to {k % 7 + 3}."}]}
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.raise_for_status().iter_lines() if line]
        return lines[-1]

    def graded() -> str:
        return str(http.post(url + "/v1/grade", json=record(k)).raise_for_status().json()["score"])

    def graded_list() -> str:
        rows = http.post(url + "/v1/grade", json=[record(k), record(k + 1)]).raise_for_status().json()
        return ",".join(str(r["score"]) for r in rows)

    def leaver() -> str:
        body = {**chat, "stream": True, "max_tokens": 200,
                "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}]}
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            for line in response.raise_for_status().iter_lines():
                if line.startswith("data:"):
                    return "left"  # closing the stream here drops the connection mid-answer
        return "ended"

    calls = [complete, streamed, graded, graded_list, leaver, leaver]
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def soak(url: str, pid: int, warmup: int, rounds: int, on_round=None) -> dict:
    # A fresh connection per client request (limits: no keep-alive pool), so the abandoned
    # streams really drop their connection.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=300, limits=limits) as http:
        for k in range(warmup):
            one_round(http, url, k)
            wait_idle(http, url)
        base, base_store = rss_mib(pid), store_mib(http, url)
        samples, stores = [], []
        for k in range(rounds):
            got = one_round(http, url, warmup + k)
            wait_idle(http, url)
            samples.append(rss_mib(pid))
            stores.append(store_mib(http, url))
            if on_round is not None:
                on_round(k, got, samples[-1])
    xs = range(len(samples))
    # Leaks are what grows besides the host prompt store (which fills up to its limit by design).
    rest = [rss - store for rss, store in zip(samples, stores)]
    slope = statistics.linear_regression(xs, rest).slope if len(rest) > 1 else 0.0
    return {"rss_after_warmup_mib": base, "rss_final_mib": samples[-1], "rss_max_mib": max(samples),
            "store_after_warmup_mib": base_store, "store_final_mib": stores[-1], "store_max_mib": max(stores),
            "slope_mib_per_100_rounds": slope * 100, "rounds": rounds, "samples": samples, "stores": stores}


class InProcessServer:
    """The service in this process (for tracemalloc), as `prom-local serve` builds it."""

    def __init__(self, model: str, parallel: int):
        import socket
        import threading

        import uvicorn

        from prom_local.engine import EngineConfig, SamplingParams
        from prom_local.serve import ServeConfig, Service, create_app

        config = ServeConfig(model_path=Path(model), model_name="soak",
                             engine=EngineConfig(n_ctx=2048, gpu_layers=0, n_parallel=parallel),
                             sampling=SamplingParams(max_tokens=16))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(Service(config)), log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # poll interval
        raise TimeoutError(self.url)

    def stop(self) -> int:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
        return 0


def traced(args, model: str) -> None:
    import os
    import tracemalloc

    tracemalloc.start(12)
    server = InProcessServer(model, args.parallel)
    server.wait_ready()
    snapshots = []
    pid = os.getpid()

    def on_round(k, got, rss):
        if k == 0:
            snapshots.append(tracemalloc.take_snapshot())
        print(f"round {k + 1}: RSS {rss:.1f} MiB, traced {tracemalloc.get_traced_memory()[0] / 2**20:.2f} MiB", flush=True)

    result = soak(server.url, pid, args.warmup, args.rounds, on_round=on_round)
    gc_collect()
    after = tracemalloc.take_snapshot()
    server.stop()
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(keep).compare_to(snapshots[0].filter_traces(keep), "traceback")
    print(f"\nRSS after round 1 -> last: {result['samples'][0]:.1f} -> {result['rss_final_mib']:.1f} MiB "
          f"(this process holds the clients too). Live Python allocations that grew most since round 1:")
    for stat in stats[:args.top]:
        print(f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks")
        for line in stat.traceback.format()[-8:]:
            print("   ", line)


def gc_collect() -> None:
    import gc
    gc.collect()


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from assets import smollm2_shipped_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M, the tests' asset)")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--host-cache-mib", type=int, default=16,
                    help="the server's host prompt store (small, so it is full after the warm-up)")
    ap.add_argument("--tracemalloc", action="store_true", help="server in this process, with tracemalloc")
    ap.add_argument("--top", type=int, default=12, help="with --tracemalloc: source lines to show")
    args = ap.parse_args()
    if args.tracemalloc:
        sys.path.insert(0, str(ROOT))
        traced(args, str(args.model or smollm2_shipped_gguf()))
        return
    server = ServerProcess("-m", str(args.model or smollm2_shipped_gguf()), "--parallel", str(args.parallel),
                           "--ctx", "2048", "--gpu-layers", "0", "--served-name", "soak", "--max-tokens", "16",
                           "--host-cache-mib", str(args.host_cache_mib))
    try:
        server.wait_ready()
        loaded = rss_mib(server.proc.pid)
        start = time.perf_counter()
        result = soak(server.url, server.proc.pid, args.warmup, args.rounds,
                      on_round=lambda k, got, rss: print(f"round {k + 1}: RSS {rss:.1f} MiB  {got}", flush=True))
        seconds = time.perf_counter() - start
    finally:
        code = server.stop()
    requests = 6 * (args.warmup + args.rounds)  # HTTP requests; 7 sequences a round
    print(f"\nRSS loaded {loaded:.1f} MiB; after {args.warmup} warm-up rounds {result['rss_after_warmup_mib']:.1f}; "
          f"after {args.rounds} more rounds {result['rss_final_mib']:.1f} (max {result['rss_max_mib']:.1f}); "
          f"of which the host prompt store {result['store_after_warmup_mib']:.1f} -> {result['store_final_mib']:.1f} "
          f"(max {result['store_max_mib']:.1f}, limit {args.host_cache_mib}); slope without the store "
          f"{result['slope_mib_per_100_rounds']:+.2f} MiB per 100 rounds; {requests} requests "
          f"(2 in 6 abandoned mid-stream) in {seconds:.0f} s; server exit code {code}")


if __name__ == "__main__":
    main()
