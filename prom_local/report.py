"""Agreement figures for scored files: one implementation shared by `score`, `report`, `compare`
and the TUI. Statistics come from numpy/scipy, not hand-rolled formulas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as sps

from .rubrics import SCORES


@dataclass
class Agreement:
    """How two score lists agree (gold vs predicted, or run A vs run B), over pairs where both exist."""

    n: int
    exact: float
    within1: float
    pearson: float | None
    spearman: float | None
    kendall: float | None
    qwk: float | None
    confusion: list[list[int]] = field(default_factory=list)   # rows: first list 1..5, cols: second

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def confusion_matrix(a: Sequence[int], b: Sequence[int]) -> np.ndarray:
    m = np.zeros((5, 5), dtype=int)
    for x, y in zip(a, b):
        m[x - 1, y - 1] += 1
    return m


def quadratic_weighted_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    observed = confusion_matrix(a, b).astype(float)
    n = observed.sum()
    if n == 0:
        return None
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    idx = np.arange(5)
    weights = (idx[:, None] - idx[None, :]) ** 2 / 16.0
    denominator = (weights * expected).sum()
    if denominator == 0:
        return 1.0 if (weights * observed).sum() == 0 else None
    return float(1.0 - (weights * observed).sum() / denominator)


def agreement(a: Sequence[int | None], b: Sequence[int | None]) -> Agreement:
    pairs = [(x, y) for x, y in zip(a, b) if x in SCORES and y in SCORES]
    if not pairs:
        return Agreement(0, 0.0, 0.0, None, None, None, None, confusion_matrix([], []).tolist())
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    constant = len(set(x)) < 2 or len(set(y)) < 2   # correlations are undefined then
    return Agreement(
        n=len(pairs),
        exact=float(np.mean(x == y)),
        within1=float(np.mean(np.abs(x - y) <= 1)),
        pearson=None if constant else _finite(sps.pearsonr(x, y).statistic),
        spearman=None if constant else _finite(sps.spearmanr(x, y).statistic),
        kendall=None if constant else _finite(sps.kendalltau(x, y).statistic),
        qwk=quadratic_weighted_kappa(x.tolist(), y.tolist()),
        confusion=confusion_matrix(x.tolist(), y.tolist()).tolist(),
    )


@dataclass
class Summary:
    rows: int
    scored: int
    errors: int
    forced: int
    histogram: dict[int, int]
    mean_score: float | None
    gold: Agreement | None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "gold"}
        out["histogram"] = {str(k): v for k, v in self.histogram.items()}
        out["mean_score"] = None if self.mean_score is None else round(self.mean_score, 4)
        out["gold"] = self.gold.as_dict() if self.gold else None
        return out


def summarise(rows: Iterable[dict]) -> Summary:
    rows = list(rows)
    scores = [r.get("score") for r in rows]
    valid = [s for s in scores if s in SCORES]
    gold_pairs = [(r.get("gold_score"), r.get("score")) for r in rows if r.get("gold_score") in SCORES]
    return Summary(
        rows=len(rows),
        scored=len(valid),
        errors=sum(1 for r in rows if r.get("error")),
        forced=sum(1 for r in rows if r.get("forced")),
        histogram={s: valid.count(s) for s in SCORES},
        mean_score=float(np.mean(valid)) if valid else None,
        gold=agreement([g for g, _ in gold_pairs], [p for _, p in gold_pairs]) if gold_pairs else None,
    )
