#!/usr/bin/env python
"""`prom-local serve` under N concurrent clients vs `prom-local score --parallel N` (and, optionally,
llama.cpp's own `llama-server -np N`), on the same Korean judge records and GGUF, in one invocation.

Each system is a fresh process and its clock starts when the process starts, so the model load is
counted on every side (as a user who starts it for a batch would see it):
  score   `prom-local score --parallel N` on a JSONL file (the baseline);
  serve   `prom-local serve --parallel N` + N client threads, each posting one record at a time to
          /v1/grade (the same rows `score` writes), until all records are graded;
  llama   `llama-server -np N` + N clients posting the same prompt (the card's system prompt and
          user message) to /v1/chat/completions with max_tokens (only with --llama-server PATH).
Workloads as in throughput.py: `repeat` (several responses per instruction) and `distinct`.
Prints records/min, p50/p95 latency per request, prompt and generated tokens/s, the ratio to
score, and the server's RSS after load and after the run (a bounded soak).

    python benchmarks/serve.py                                   # SmolLM2, 8 records, N=4, ~5 min on 2 cores
    python benchmarks/serve.py --clients 2 4 --records 16 --max-tokens 96
    python benchmarks/serve.py --llama-server ~/llama.cpp/build/bin/llama-server

Building llama-server (about 10 minutes on 2 cores; not needed for the other columns): take
llama.cpp from the llama-cpp-python sdist the venv was built from (same version as the runtime),
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF
    cmake --build build -j2 --target llama-server          # -> build/bin/llama-server
(-DGGML_NATIVE=OFF: on these VMs llama.cpp's AMX kernels crash; the venv is built the same way.)
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from throughput import build_workloads  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # poll interval
    raise TimeoutError(url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(name: str, wall: float, latencies: list[float], rows: list[dict], extra: dict) -> dict:
    prompt = sum(r.get("prompt_tokens", 0) for r in rows)
    gen = sum(r.get("completion_tokens", 0) for r in rows)
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    return {"system": name, "wall_s": wall, "records_per_min": len(rows) / wall * 60,
            "p50_s": statistics.median(lat) if lat else float("nan"), "p95_s": p95,
            "prompt_tok_s": prompt / wall, "gen_tok_s": gen / wall, **extra}


def run_score(args, records: list[dict], n: int, tmp: Path) -> dict:
    src, out = tmp / "in.jsonl", tmp / f"score-{n}.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out), "-m", args.model,
                    "--parallel", str(n), "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens),
                    "--gpu-layers", args.gpu_layers, "-q"], env=ENV, check=False, capture_output=True)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    return _stats("score", wall, [], rows, {})


def _clients(n: int, items: list, call) -> tuple[list, list[float]]:
    """n threads, each taking the next item when its previous request is answered."""
    results: list = [None] * len(items)
    latencies: list[float] = []
    lock = threading.Lock()
    todo = iter(range(len(items)))

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            t = time.perf_counter()
            results[i] = call(items[i])
            with lock:
                latencies.append(time.perf_counter() - t)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(worker) for _ in range(n)]:
            f.result()
    return results, latencies


def run_serve(args, records: list[dict], n: int) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "prom_local", "serve", "--port", "0", "-m", args.model,
                             "--parallel", str(n), "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens),
                             "--gpu-layers", args.gpu_layers],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        _wait_health(url, proc)
        rss_loaded = _rss_mib(proc.pid)
        with httpx.Client(timeout=3600) as http:
            rows, lat = _clients(n, records, lambda r: http.post(url + "/v1/grade", json=r).json())
        wall = time.perf_counter() - start
        return _stats("serve", wall, lat, rows, {"rss_loaded_mib": rss_loaded, "rss_after_mib": _rss_mib(proc.pid)})
    finally:
        proc.terminate()
        proc.wait(60)


def run_llama(args, records: list[dict], n: int) -> dict:
    from prom_local.engine import read_model_info
    from prom_local.prompts import get_profile
    from prom_local.records import record_from_mapping

    profile = get_profile("prometheus-ko")
    chats = [profile.messages(record_from_mapping(r, line=i + 1)) for i, r in enumerate(records)]
    name = read_model_info(args.model).path.name
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([args.llama_server, "-m", args.model, "-np", str(n), "-c", str(args.ctx * n),
                             "--host", "127.0.0.1", "--port", str(port), "-ngl", "0" if args.gpu_layers == "0" else "99"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        rss_loaded = _rss_mib(proc.pid)

        def call(messages):
            body = {"model": name, "messages": messages, "max_tokens": args.max_tokens, "temperature": 0}
            usage = http.post(url + "/v1/chat/completions", json=body).json()["usage"]
            return {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]}

        with httpx.Client(timeout=3600) as http:
            rows, lat = _clients(n, chats, call)
        wall = time.perf_counter() - start
        return _stats("llama-server", wall, lat, rows, {"rss_loaded_mib": rss_loaded,
                                                         "rss_after_mib": _rss_mib(proc.pid)})
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    from assets import smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M, the tests' asset)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--per-instruction", type=int, default=4, help="responses per instruction in `repeat`")
    ap.add_argument("--length", choices=["short", "card"], default="short")
    ap.add_argument("--clients", type=int, nargs="+", default=[4], help="N: clients, --parallel and -np")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--ctx", type=int, default=3072)
    ap.add_argument("--gpu-layers", default="0")
    ap.add_argument("--workloads", nargs="+", default=["repeat", "distinct"])
    ap.add_argument("--llama-server", default=None, help="path to a llama-server binary (see the docstring)")
    args = ap.parse_args()
    args.model = str(args.model or smollm2_gguf())
    workloads = build_workloads(args.records, args.per_instruction, args.length)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            for n in args.clients:
                runs = [run_score(args, workloads[name], n, Path(tmp)), run_serve(args, workloads[name], n)]
                if args.llama_server:
                    runs.append(run_llama(args, workloads[name], n))
                for r in runs:
                    r.update(workload=name, n=n, vs_score=r["records_per_min"] / runs[0]["records_per_min"])
                    results.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"\n{args.records} records, {args.length} length, max_tokens {args.max_tokens}, "
          f"model {Path(args.model).name}, {os.cpu_count()} CPUs; model load counted\n")
    print("| workload | N | system | records/min | vs score | p50 s | p95 s | prompt tok/s | gen tok/s | RSS loaded -> after MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rss = (f"{r['rss_loaded_mib']:.0f} -> {r['rss_after_mib']:.0f}" if "rss_loaded_mib" in r else "")
        p50 = f"{r['p50_s']:.1f}" if r["p50_s"] == r["p50_s"] else ""
        p95 = f"{r['p95_s']:.1f}" if r["p95_s"] == r["p95_s"] else ""
        print(f"| {r['workload']} | {r['n']} | {r['system']} | {r['records_per_min']:.1f} | {r['vs_score']:.2f}x "
              f"| {p50} | {p95} | {r['prompt_tok_s']:.0f} | {r['gen_tok_s']:.1f} | {rss} |")


if __name__ == "__main__":
    main()
