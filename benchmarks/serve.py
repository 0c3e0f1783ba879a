#!/usr/bin/env python
"""`prom-local serve --parallel N` vs llama.cpp's own `llama-server -np N`, N concurrent clients each,
on the same Korean judge records, the same GGUF and the same prompt tokens, in one invocation.

Systems (each a fresh process on 127.0.0.1, on a port the OS picked):
  serve   `prom-local serve --parallel N`; N client threads each post one record at a time to
          /v1/grade (the rows `score` writes) until every record is graded;
  llama   `llama-server -np N`; N client threads each post one record at a time to /completion
          with `prompt` = the token ids prom-local renders for that record (its tokenizer, its
          card prompt; llama-server takes an id list as is, adding no BOS), so both servers
          decode exactly the same prompt tokens. The script checks this: every serve row's
          prompt_tokens must equal that id list's length, and llama-server's tokens_evaluated too;
  score   (with --systems ... score) `prom-local score --parallel N` on the same records as a file,
          the batch baseline (model load counted, as before).
  llama-default  `llama-server -np N -c (ctx x N)` and nothing else: its own threads, batch sizes and
          flash attention `auto`, one KV stream per slot (-np given: kv_unified stays off);
  llama-auto  `llama-server -c (ctx x N)` and nothing else, as its users run it: -np left at auto,
          which is 4 slots over one KV buffer all slots share (kv_unified on; with N other than 4,
          `-np N -kvu`, what auto does with N), where every token's attention walks the cells of all
          slots (masked);
  serve-fa-off, score-fa-off  prom-local with `--flash-attn off`, its CPU default before flash
          attention became `auto` (the "before" of docs/performance.md's figures).
Same sampling on both servers: greedy (temperature 0, llama-server's top_k 1 path), no repeat
penalty, max tokens --max-tokens (n_predict). `llama` is matched to prom-local: same CPU threads
(--threads, -t/-tb; default the os.sched_getaffinity count), per-sequence context (-c = ctx x N,
split into N slots), batch 512, flash attention `auto` on both (--flash-attn; on for the CPU).
prom-local additionally decodes a few tokens (the forced "[RESULT] N" continuation) when a grade
ends without a score; llama-server has no such step. Tokens generated are counted on both sides.

Workloads as in throughput.py: `repeat` (several responses per instruction, round-robin) and
`distinct` (every instruction differs). For every (workload, N, round) each system runs once,
the order alternating per round so drifting machine load favours none. Clock: from the first
request to the last answer, model load EXCLUDED (load_s is reported beside it; records/min
with load included is the last column). Prints records/min, p50/p95 request latency, prompt
tokens/s (all prompt tokens sent / wall; the share reused from cache is shown), generated
tokens/s, the server process's CPU seconds per record (user + system, all threads: less
sensitive than wall time to other jobs on the machine, though spinning threads inflate it), the
ratio prom-local/llama-server per row, the load average, and both servers' RSS.
Bounded: --records records per run, and --timeout seconds per run (then the run is marked).

    python benchmarks/serve.py --llama-server /work/build/llama-server --clients 1 2 4 --rounds 2
    python benchmarks/serve.py --llama-server PATH --systems serve llama score --clients 4

Building llama-server (about 10-15 minutes on 2 cores): the llama.cpp that llama-cpp-python
0.3.36 vendors, i.e. the same llama.cpp as prom-local's runtime:
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d sdist
    tar xzf sdist/llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release
    cmake --build build -j2 --target llama-server          # -> build/bin/llama-server
(-DGGML_NATIVE=OFF: this CPU's AMX kernels segfault in a native build; the venv's llama-cpp-python
is built the same way.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import resource
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
THREADS = len(os.sched_getaffinity(0))


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
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


def prompt_ids(model: str, records: list[dict]) -> list[list[int]]:
    """The token ids prom-local decodes for each record (its tokenizer, the card's prompt)."""
    from prom_local.engine import LlamaModel
    from prom_local.judging.prompt_tokens import tokenize_prompt
    from prom_local.judging.prompts import get_profile
    from prom_local.judging.records import record_from_mapping

    vocab = LlamaModel(model, vocab_only=True)
    profile = get_profile("prometheus-ko")
    return [tokenize_prompt(record_from_mapping(r, line=i + 1), profile, vocab) for i, r in enumerate(records)]


def reuse_ceiling(ids: list[list[int]]) -> float:
    """The share of the prompt tokens a server could take from a cache at most: each record's
    longest common prefix with any record before it (its last token always computed). Two
    servers with the same speed per computed token differ by no more than their shares of this."""
    from prom_local.engine.cache import common_prefix

    reusable = sum(max((common_prefix(a, b, len(a) - 1) for b in ids[:i]), default=0) for i, a in enumerate(ids))
    return reusable / max(1, sum(map(len, ids)))


def _clients(n: int, items: list, call, timeout: float) -> tuple[list, list[float]]:
    """n threads, each taking the next item when its previous request is answered; none starts a
    new one after `timeout` seconds (those items stay None)."""
    results: list = [None] * len(items)
    latencies: list[float] = []
    lock = threading.Lock()
    todo = iter(range(len(items)))
    stop_at = time.perf_counter() + timeout

    def worker() -> None:
        while time.perf_counter() < stop_at:
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


def _stats(system: str, load: float, wall: float, latencies: list[float], rows: list[dict | None],
           cpu: float = float("nan")) -> dict:
    done = [r for r in rows if r is not None]
    prompt = sum(r["prompt_tokens"] for r in done)
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    return {"system": system, "load_s": load, "wall_s": wall, "records": len(done),
            "complete": len(done) == len(rows),
            "records_per_min": len(done) / wall * 60, "with_load_per_min": len(done) / (wall + load) * 60,
            "p50_s": statistics.median(lat) if lat else float("nan"), "p95_s": p95,
            "prompt_tok_s": prompt / wall, "reused_share": sum(r["reused"] for r in done) / max(prompt, 1),
            "gen_tokens": sum(r["completion_tokens"] for r in done),
            "gen_tok_s": sum(r["completion_tokens"] for r in done) / wall,
            "cpu_s_per_record": cpu / max(len(done), 1),
            "texts": [r["text"] if r else None for r in rows]}


class Server:
    """A server process: started, timed until /health says ready, stopped."""

    def __init__(self, argv: list[str], url: str | None = None, env: dict | None = None):
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = url
        if url is None:  # prom-local prints the URL once bound
            for line in self.proc.stdout:
                found = re.search(r"listening on (http://\S+)", line)
                if found:
                    self.url = found.group(1)
                    break
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        _wait_health(self.url, self.proc)
        self.load_s = time.perf_counter() - self.start
        self.rss_loaded = _rss_mib(self.proc.pid)

    def stop(self) -> float:
        rss = _rss_mib(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(60)
        return rss


def run_serve(args, records: list[dict], ids: list[list[int]], n: int, flash_attn: str = "auto",
              name: str = "serve") -> dict:
    server = Server([sys.executable, "-m", "prom_local", "serve", "--port", "0", "-m", args.model,
                     "--parallel", str(n), "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens),
                     "--gpu-layers", args.gpu_layers, "--threads", str(args.threads),
                     "--flash-attn", flash_attn], env=ENV)
    try:
        with httpx.Client(timeout=args.timeout + 60) as http:
            def call(i: int) -> dict:
                row = http.post(server.url + "/v1/grade", json=records[i]).raise_for_status().json()
                if row["prompt_tokens"] != len(ids[i]):
                    raise AssertionError(f"record {i}: serve decoded {row['prompt_tokens']} prompt tokens, "
                                         f"the benchmark sent llama-server {len(ids[i])}")
                return {"prompt_tokens": row["prompt_tokens"], "reused": row.get("reused_prompt_tokens", 0),
                        "completion_tokens": row["completion_tokens"], "text": row["output"]}

            t, cpu = time.perf_counter(), _cpu_s(server.proc.pid)
            rows, lat = _clients(n, list(range(len(records))), call, args.timeout)
            wall, cpu = time.perf_counter() - t, _cpu_s(server.proc.pid) - cpu
    finally:
        rss_after = server.stop()
    return {**_stats(name, server.load_s, wall, lat, rows, cpu), "rss": (server.rss_loaded, rss_after)}


def run_llama(args, records: list[dict], ids: list[list[int]], n: int, defaults: bool = False,
              auto: bool = False) -> dict:
    """llama-server: matched to prom-local, or (defaults) `-np N` and the context only, or (auto)
    the context only: `-np` left at its default, auto, which llama-server turns into 4 slots over
    one KV buffer shared by all of them (server.cpp: n_parallel auto -> 4, kv_unified = true)."""
    port = _free_port()
    matched = ([] if defaults or auto else ["-t", str(args.threads), "-tb", str(args.threads), "-b", "512",
                                            "-ub", "512", "-fa", "auto", "-ngl", "0" if args.gpu_layers == "0" else "99"])
    # auto with N other than 4: N slots over one shared buffer, what auto would do with N
    slots = (["-np", str(n), "-kvu"] if n != 4 else []) if auto else ["-np", str(n)]
    server = Server([args.llama_server, "-m", args.model, *slots, "-c", str(args.ctx * n), *matched,
                     "--host", "127.0.0.1", "--port", str(port)],
                    url=f"http://127.0.0.1:{port}")
    try:
        with httpx.Client(timeout=args.timeout + 60) as http:
            def call(i: int) -> dict:
                body = {"prompt": ids[i], "n_predict": args.max_tokens, "temperature": 0, "top_k": 1,
                        "repeat_penalty": 1.0, "cache_prompt": True, "seed": 0}
                out = http.post(server.url + "/completion", json=body).raise_for_status().json()
                if out["tokens_evaluated"] != len(ids[i]):
                    raise AssertionError(f"record {i}: llama-server evaluated {out['tokens_evaluated']} "
                                         f"prompt tokens, sent {len(ids[i])}")
                return {"prompt_tokens": out["tokens_evaluated"], "completion_tokens": out["tokens_predicted"],
                        "reused": out["tokens_evaluated"] - out["timings"]["prompt_n"], "text": out["content"]}

            t, cpu = time.perf_counter(), _cpu_s(server.proc.pid)
            rows, lat = _clients(n, list(range(len(records))), call, args.timeout)
            wall, cpu = time.perf_counter() - t, _cpu_s(server.proc.pid) - cpu
    finally:
        rss_after = server.stop()
    return {**_stats("llama-auto" if auto else "llama-default" if defaults else "llama", server.load_s, wall, lat,
                     rows, cpu),
            "rss": (server.rss_loaded, rss_after)}


def run_score(args, records: list[dict], ids: list[list[int]], n: int, flash_attn: str = "auto",
              name: str = "score") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
        start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out), "-m", args.model,
                        "--parallel", str(n), "--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens),
                        "--gpu-layers", args.gpu_layers, "--threads", str(args.threads), "--flash-attn", flash_attn,
                        "-q"], env=ENV, check=False, capture_output=True,
                       timeout=args.timeout + 120)
        wall, now = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        # the whole process, load included (the servers' columns count only the requests)
        cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
        rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    rows = [{"prompt_tokens": r["prompt_tokens"], "reused": r.get("reused_prompt_tokens", 0),
             "completion_tokens": r["completion_tokens"], "text": r["output"]} for r in rows]
    # one process, load and all: wall counts the load (load_s 0), as `score` users see it
    return {**_stats(name, 0.0, wall, [], rows, cpu), "rss": None}


SYSTEMS = {"serve": run_serve, "llama": run_llama, "score": run_score,
           "llama-default": lambda *a: run_llama(*a, defaults=True),
           "llama-auto": lambda *a: run_llama(*a, auto=True),
           "serve-fa-off": lambda *a: run_serve(*a, flash_attn="off", name="serve-fa-off"),
           "score-fa-off": lambda *a: run_score(*a, flash_attn="off", name="score-fa-off")}
LLAMAS = ("llama", "llama-default", "llama-auto")


def _same_text(a: list, b: list) -> str:
    """Records whose generated text agrees (prom-local's output may end with the forced score)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    same = sum(x == y or x.startswith(y) or y.startswith(x) for x, y in pairs)
    return f"{same}/{len(pairs)}"


def print_table(results: list[dict], args) -> None:
    print(f"\n{args.records} records per run, {args.length} length, max_tokens {args.max_tokens}, greedy, "
          f"model {Path(args.model).name}, {os.cpu_count()} CPUs, {args.threads} threads; clock from the first "
          "request to the last answer (model load excluded; load s and records/min with it are shown)\n")
    print("| workload | N | round | system | records/min | " + " | ".join(f"vs {b}" for b in LLAMAS)
          + " | p50 s | p95 s | prompt tok/s (reused) "
          "| gen tok/s (tokens) | CPU s/record | same text as llama | load s | rec/min incl. load | RSS loaded -> after MiB "
          "| loadavg |")
    print("|" + "---|" * (15 + len(LLAMAS)))
    for r in results:
        rss = f"{r['rss'][0]:.0f} -> {r['rss'][1]:.0f}" if r.get("rss") else ""
        fmt = (lambda v: f"{v:.1f}" if v == v else "")
        print(f"| {r['workload']} | {r['n']} | {r['round']} | {r['system']}{'' if r['complete'] else ' (timed out)'} "
              f"| {r['records_per_min']:.1f}{' (load incl.)' if r['system'].startswith('score') else ''} | "
              + " | ".join(r.get(f"vs_{b}", "") for b in LLAMAS) + f" | {fmt(r['p50_s'])} | {fmt(r['p95_s'])} "
              f"| {r['prompt_tok_s']:.0f} ({r['reused_share']:.0%}) | {r['gen_tok_s']:.1f} ({r['gen_tokens']}) "
              f"| {fmt(r['cpu_s_per_record'])} | {r.get('same_text', '')} | {r['load_s']:.1f} | {r['with_load_per_min']:.1f} | {rss} "
              f"| {r['loadavg'][0]:.1f} -> {r['loadavg'][1]:.1f} |")


def main() -> None:
    from assets import smollm2_shipped_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M, the tests' asset)")
    ap.add_argument("--llama-server", default=None, help="path to a llama-server binary (see the docstring)")
    ap.add_argument("--systems", nargs="+", default=["serve", "llama"], choices=sorted(SYSTEMS))
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--per-instruction", type=int, default=4, help="responses per instruction in `repeat`")
    ap.add_argument("--length", choices=["short", "card"], default="short")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4], help="N: clients, --parallel and -np")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--ctx", type=int, default=3072, help="context per sequence")
    ap.add_argument("--gpu-layers", default="0")
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="CPU threads on every side (default: this process's CPUs). On a machine other jobs "
                    "load, 1 keeps llama.cpp's thread barriers from stalling on a descheduled peer")
    ap.add_argument("--workloads", nargs="+", default=["repeat", "distinct"])
    ap.add_argument("--rounds", type=int, default=1, help="repetitions, alternating the system order")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run before clients stop")
    ap.add_argument("--json", type=Path, help="also write every result here")
    args = ap.parse_args()
    args.model = str(args.model or smollm2_shipped_gguf())
    if set(LLAMAS) & set(args.systems) and not args.llama_server:
        ap.error("--llama-server PATH is needed for the llama system (or leave it out of --systems)")
    workloads = build_workloads(args.records, args.per_instruction, args.length)
    prompts = {name: prompt_ids(args.model, workloads[name]) for name in args.workloads}
    results = []
    for rnd in range(1, args.rounds + 1):
        for name in args.workloads:
            ids = prompts[name]
            for n in args.clients:
                order = args.systems if (rnd + args.clients.index(n)) % 2 else args.systems[::-1]
                runs = {}
                for system in order:
                    before = os.getloadavg()[0]
                    r = SYSTEMS[system](args, workloads[name], ids, n)
                    r.update(workload=name, n=n, round=rnd, loadavg=(before, os.getloadavg()[0]))
                    runs[system] = r
                    print(json.dumps({k: v for k, v in r.items() if k != "texts"}), file=sys.stderr, flush=True)
                for system in args.systems:
                    r = runs[system]
                    for base_name in (b for b in LLAMAS if b in runs and b != system):
                        # score's clock includes its load: compare it with llama's rate with load
                        load = system.startswith("score")
                        base = runs[base_name]["with_load_per_min" if load else "records_per_min"]
                        r[f"vs_{base_name}"] = f"{r['records_per_min'] / base:.2f}x"
                        if base_name == "llama" or "llama" not in runs:
                            r["same_text"] = _same_text(r["texts"], runs[base_name]["texts"])
                    results.append(r)
    print_table(results, args)
    for name in args.workloads:
        best = reuse_ceiling(prompts[name])
        runs = [r for r in results if r["workload"] == name]
        # generated tokens cost the same whatever is reused, so the prompt ratio is an upper bound
        bounds = "; ".join(f"{r['system']} (N {r['n']}, round {r['round']}) reused {r['reused_share']:.1%}, so a "
                           "server that reuses all of it, at the same speed per computed token, is at most "
                           f"{(1 - r['reused_share']) / (1 - best):.2f}x as fast" for r in runs if r["system"] in LLAMAS)
        print(f"\n{name}: at most {best:.1%} of the prompt tokens can come from a cache (each record's longest "
              f"common prefix with an earlier one){'; ' + bounds if bounds else ''}")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), "utf-8")


if __name__ == "__main__":
    main()
