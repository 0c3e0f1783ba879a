"""`prom-local bench`: a short measurement of the user's own model on the user's own machine.

The numbers come from the path `score` takes: a `Judge` (the same engine, sized context, prefix
sharing and forced-score continuation) grading built-in Korean judge records. Each --parallel
setting gets a fresh engine, so nothing cached by one setting speeds up the next, and two passes:

- the run: every record graded as `score` would grade it -> records/min, and the wall time;
- a prompt-only pass on another fresh engine (max_tokens 0: prompts, the short forced-score
  continuation, no feedback) -> prompt tokens/s.

Generated tokens/s is the run's generated tokens over the run's time not spent on prompts (run time
minus the prompt-only pass): in a run, prompt chunks and generated tokens share the same decode
rounds, so this split is an estimate, stated as such.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .doctor import builtin_records
from ..engine import EngineConfig, SamplingParams
from ..judging.judge import Judge
from ..judging.records import Record
from ..runs.workload import measure
from ..settings import DEFAULT_PROFILE


def bench_records(n: int) -> list[Record]:
    """n records from the built-in set; beyond it, copies whose instruction starts with "[k] ", so
    no two records share a whole prompt (the engine would reuse it and flatter the numbers)."""
    base = builtin_records()
    out = []
    for i in range(n):
        rec, copy = base[i % len(base)], i // len(base)
        if copy:
            rec = dataclasses.replace(rec, id=f"{rec.id}-{copy}", instruction=f"[{copy}] {rec.instruction}")
        out.append(rec)
    return out


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter for this process (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """Peak resident memory of this process in bytes (since the last reset, on Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class BenchRow:
    parallel: int
    backend: str
    gpu_layers: int
    n_layer: int
    n_ctx: int
    records: int
    errors: int
    load_seconds: float
    run_seconds: float
    prompt_seconds: float          # the prompt-only pass
    prompt_tokens: int             # computed in the prompt-only pass (cached prefixes not counted)
    generated_tokens: int          # in the run
    peak_rss_bytes: int | None
    draft: int = 0                 # drafts per step (--draft; 0 = off)
    drafted_tokens: int = 0        # in the run: drafts decoded for verification
    accepted_tokens: int = 0       # of which accepted
    draft_rows: int = 0            # verification steps (a sequence's step that carried drafts)

    @property
    def records_per_minute(self) -> float:
        return self.records / self.run_seconds * 60 if self.run_seconds > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generated_tokens_per_second(self) -> float | None:
        generating = self.run_seconds - self.prompt_seconds
        return self.generated_tokens / generating if generating > 0 and self.generated_tokens else None

    def as_dict(self) -> dict:
        row = dataclasses.asdict(self)
        row.update(records_per_minute=round(self.records_per_minute, 2),
                   prompt_tokens_per_second=round(self.prompt_tokens_per_second, 1),
                   generated_tokens_per_second=(None if self.generated_tokens_per_second is None
                                                else round(self.generated_tokens_per_second, 1)))
        return row


def _kv_label(info: dict) -> str:
    k, v = info.get("cache_type_k", "f16"), info.get("cache_type_v", "f16")
    return k if k == v else f"K {k}, V {v}"


def _grade_all(judge: Judge, records: list[Record], tick: Callable[[], None]) -> tuple[float, list]:
    start = time.perf_counter()
    grades = []
    for grade in judge.grade_stream(records):
        grades.append(grade)
        tick()
    return time.perf_counter() - start, grades


def run_bench(model_path: str | Path, *, parallels: list[int], engine: EngineConfig, sampling: SamplingParams,
              profile: str = DEFAULT_PROFILE, records: list[Record],
              on_status: Callable[[str], None] | None = None,
              on_tick: Callable[[], None] | None = None) -> tuple[list[BenchRow], dict]:
    """Measure every --parallel setting -> (rows, setup). `on_tick` is called once per record graded
    (2 x records x settings in all); `on_status` gets the engine's start-up lines."""
    say = on_status or (lambda message: None)
    tick = on_tick or (lambda: None)
    work = measure(records, model_path, profile, sampling.max_tokens)
    setup = {"model": str(model_path), "records": len(records), "max_tokens": sampling.max_tokens,
             "longest_prompt": work.longest_prompt if work else None}
    rows = []
    for n in parallels:
        config = dataclasses.replace(engine, n_parallel=n, need_tokens=work.need_tokens if work else None)
        reset_peak_rss()
        start = time.perf_counter()
        with Judge(model_path, profile=profile, engine=config, sampling=sampling, on_status=say) as judge:
            load = time.perf_counter() - start
            info = judge.describe_engine()
            setup.setdefault("offload", info["offload"])
            setup.setdefault("kv_cache", _kv_label(info))
            setup.setdefault("flash_attn", "on" if info.get("flash_attn") else "off")
            run_seconds, grades = _grade_all(judge, records, tick)
            stats = judge.engine_stats()
        prompt_only = dataclasses.replace(sampling, max_tokens=0)
        with Judge(model_path, profile=profile, engine=config, sampling=prompt_only) as judge:
            prompt_seconds, prompt_grades = _grade_all(judge, records, tick)
        rows.append(BenchRow(
            parallel=n, backend=info["backend"], gpu_layers=info["gpu_layers"], n_layer=info["n_layer"],
            n_ctx=info["n_ctx"], records=len(records), errors=sum(g.error is not None for g in grades),
            load_seconds=load, run_seconds=run_seconds, prompt_seconds=prompt_seconds,
            prompt_tokens=sum(g.prompt_tokens - g.extra.get("reused_prompt_tokens", 0) for g in prompt_grades),
            generated_tokens=sum(g.completion_tokens for g in grades), peak_rss_bytes=peak_rss(),
            draft=info.get("draft", 0), drafted_tokens=stats.drafted_tokens, accepted_tokens=stats.accepted_tokens,
            draft_rows=stats.draft_rows))
    return rows, setup
