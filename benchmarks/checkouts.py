#!/usr/bin/env python
"""Two checkouts of prom-local on the same work, in one invocation: a refactoring's before and after.

Each round runs `prom-local score` from the BEFORE checkout and from the AFTER checkout (this one by
default) on the same records, model and flags, in alternating order (AB, BA, ...) so a machine whose
load drifts favours neither. Prints, per checkout, wall and CPU seconds, prompt tokens computed (reused
ones apart) and tokens generated, then whether the two wrote the same rows (scores, outputs, token
counts; probabilities within 1e-6) and the wall/CPU ratios after/before.

    python benchmarks/checkouts.py --before 2564ec2                  # a commit: checked out in a temp dir
    python benchmarks/checkouts.py --before ../old-clone --records 8 --parallel 4 --rounds 2

BEFORE is a folder holding a checkout, or a revision of this repository (a `git worktree` is made for
it and removed at the end). Both run with this interpreter: the installed packages are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

ROW_KEYS = ("id", "score", "output", "forced", "prompt_tokens", "completion_tokens", "error")


def checkout(spec: str, tmp: Path) -> tuple[Path, bool]:
    """(folder, made here): a folder as given, or a worktree of a revision."""
    if Path(spec).is_dir():
        return Path(spec).resolve(), False
    folder = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(folder), spec], check=True)
    return folder, True


def run_score(folder: Path, records: Path, out: Path, args) -> dict:
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(folder)}
    cmd = [sys.executable, "-m", "prom_local", "score", str(records), "-o", str(out), "--model", args.model,
           "--parallel", str(args.parallel), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
           "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 2):
        raise SystemExit(f"{folder}: score exited {done.returncode}\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines() if line.strip()]
    reused = sum(r.get("reused_prompt_tokens", 0) for r in rows)
    return {"wall": wall, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "computed": sum(r.get("prompt_tokens", 0) for r in rows) - reused, "reused": reused,
            "generated": sum(r.get("completion_tokens", 0) for r in rows), "rows": rows}


def same_rows(a: list[dict], b: list[dict]) -> tuple[bool, str]:
    by_id = {r["id"]: r for r in b}
    if sorted(by_id) != sorted(r["id"] for r in a):
        return False, "different ids"
    for row in a:
        other = by_id[row["id"]]
        for key in ROW_KEYS:
            if row.get(key) != other.get(key):
                return False, f"{row['id']}: {key} differs"
        pa, pb = row.get("probabilities") or {}, other.get("probabilities") or {}
        if pa.keys() != pb.keys() or any(abs(pa[k] - pb[k]) > 1e-6 for k in pa):
            return False, f"{row['id']}: probabilities differ beyond 1e-6"
    return True, f"{len(a)} rows equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout folder or a revision of this repo")
    parser.add_argument("--after", default=str(ROOT), help="a checkout folder (default: this one)")
    parser.add_argument("--model", default=None, help="GGUF (default: the tests' SmolLM2)")
    parser.add_argument("--records", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.model is None:
        from assets import smollm2_shipped_gguf
        args.model = str(smollm2_shipped_gguf())
    from throughput import build_workloads

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        before, made = checkout(args.before, tmp)
        try:
            compare(before, Path(args.after).resolve(), tmp, args, build_workloads(args.records, 1, "short"))
        finally:
            if made:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)


def compare(before: Path, after: Path, tmp: Path, args, workloads: dict) -> None:
    records = tmp / "records.jsonl"
    records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in workloads["distinct"]), "utf-8")
    sides = {"before": before, "after": after}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for name in (("before", "after") if i % 2 == 0 else ("after", "before")):
            result = run_score(sides[name], records, tmp / f"{name}.jsonl", args)
            runs[name].append(result)
            print(f"round {i + 1} {name:6s} wall {result['wall']:7.1f} s  cpu {result['cpu']:7.1f} s  "
                  f"prompt computed {result['computed']:6d} (reused {result['reused']})  "
                  f"generated {result['generated']:5d}", flush=True)
    print(f"\n{args.records} records, --parallel {args.parallel}, --max-tokens {args.max_tokens}, "
          f"{args.rounds} rounds; before = {before}, after = {after}")
    for i, (b, a) in enumerate(zip(runs["before"], runs["after"]), 1):
        same, why = same_rows(b["rows"], a["rows"])
        print(f"round {i}: rows {'same' if same else 'DIFFER'} ({why}); tokens "
              f"{'same' if (b['computed'], b['generated']) == (a['computed'], a['generated']) else 'DIFFER'}; "
              f"wall after/before {a['wall'] / b['wall']:.2f}x  cpu after/before {a['cpu'] / b['cpu']:.2f}x")
    wall_b, wall_a = (sum(r["wall"] for r in runs[k]) for k in ("before", "after"))
    cpu_b, cpu_a = (sum(r["cpu"] for r in runs[k]) for k in ("before", "after"))
    print(f"all rounds: wall after/before {wall_a / wall_b:.2f}x  cpu after/before {cpu_a / cpu_b:.2f}x")


if __name__ == "__main__":
    main()
