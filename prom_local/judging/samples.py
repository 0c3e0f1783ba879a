"""Several sampled judgments of one record, and the sampling protocols that ask for them.

A Judge whose SamplingParams has n > 1 gets n outputs per record from one prompt computation (the
engine copies the prompt's KV to n sequences); `combine` turns their n Grades into the record's one
row: the mean score, the n scores and their spread, the first sample's feedback.
"""

from __future__ import annotations

import statistics
from dataclasses import fields, replace
from typing import Iterable, Sequence

from ..engine import SamplingParams
from .grades import Grade, round_half_up

# The Prometheus papers' protocol, as prometheus-eval's evaluation code runs it (the repository
# github.com/prometheus-eval/prometheus-eval, commit dcfb442):
# - eval/run_evaluate.py lines 423-429: params {"max_tokens": 1024, "repetition_penalty": 1.03,
#   "best_of": 1, "temperature": temperature, "top_p": 0.9}, with temperature 1.0 for every run
#   (lines 380-389), on vLLM;
# - eval/run_evaluate.py line 439: `runs=1 if mode != "a2a" else 3`: absolute grading is sampled
#   three times;
# - eval/utils.py lines 52-53 and 69: the score compared with the gold is statistics.mean of the
#   three;
# - libs/prometheus-eval/prometheus_eval/utils.py lines 19-25: the library's default params are the
#   same (max_tokens 1024, repetition_penalty 1.03, temperature 1.0, top_p 0.9).
# max_tokens is left to --max-tokens (the run's context is sized from it before any protocol).
PROTOCOLS: dict[str, dict[str, object]] = {
    "paper": {"temperature": 1.0, "top_p": 0.9, "repeat_penalty": 1.03, "n": 3},
}


def apply_protocol(params: SamplingParams, name: str | None, keep: Iterable[str] = ()) -> SamplingParams:
    """`params` with a protocol's settings, except the fields in `keep` (set explicitly)."""
    if not name:
        return params
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    keep = set(keep)
    known = {f.name for f in fields(SamplingParams)}
    return replace(params, **{k: v for k, v in PROTOCOLS[name].items() if k in known and k not in keep})


def combine(grades: Sequence[Grade]) -> Grade:
    """One row for a record's samples: `score` = the mean of the valid scores rounded
    half up, with `samples`, `scores`, `mean_score`, `score_spread` (population standard
    deviation) and `forced_samples`; feedback, output and `forced` are the first sample's;
    `probabilities` the mean of the samples' P(1..5); completion tokens are summed and seconds are
    the longest sample's (they ran side by side)."""
    first = grades[0]
    scores = [g.score for g in grades]
    valid = [s for s in scores if s is not None]
    mean = statistics.fmean(valid) if valid else None
    probs = [g.probabilities for g in grades if g.probabilities is not None]
    masses = [g.score_mass for g in grades if g.score_mass is not None]
    errors = {g.error for g in grades if g.error}
    grade = replace(
        first, extra=dict(first.extra),
        score=round_half_up(mean) if mean is not None else None,
        probabilities=tuple(sum(p[i] for p in probs) / len(probs) for i in range(len(probs[0]))) if probs else None,
        score_mass=statistics.fmean(masses) if masses else None,
        completion_tokens=sum(g.completion_tokens for g in grades),
        seconds=max(g.seconds for g in grades),
        # A cancelled sample (an interrupted run) makes the row one to grade again, whatever the
        # others said: a mean of fewer samples would pass for the protocol's.
        error="cancelled" if "cancelled" in errors else (None if mean is not None else first.error))
    grade.extra.update({
        "samples": len(grades), "scores": scores,
        "mean_score": round(mean, 4) if mean is not None else None,
        "score_spread": round(statistics.pstdev(valid), 4) if valid else None,
        "forced_samples": sum(g.forced for g in grades),
    })
    for key in ("drafted_tokens", "accepted_tokens"):   # with --draft: all samples' drafts, like tokens
        if key in first.extra:
            grade.extra[key] = sum(g.extra.get(key, 0) for g in grades)
    return grade


def samples_line(row: dict) -> str:
    """A row's samples for people: "mean 3.67 of 3 samples (4 3 4), spread 0.47, 1 forced"."""
    scores = " ".join("-" if s is None else str(s) for s in row.get("scores") or [])
    mean, spread = row.get("mean_score"), row.get("score_spread")
    text = (f"mean {mean:.2f}" if mean is not None else "no score") + f" of {row.get('samples')} samples ({scores})"
    if spread is not None:
        text += f", spread {spread:.2f}"
    forced = row.get("forced_samples") or 0
    return text + (f", {forced} forced (the model wrote no score)" if forced else "")


def row_score(row: dict) -> float | None:
    """The score a results row stands for: its mean_score when it has samples, else its score."""
    value = row.get("mean_score", row.get("score"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
