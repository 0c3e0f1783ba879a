"""Agreement figures for scored files: one implementation shared by `score`, `report`, `compare`
and the TUI. Statistics come from numpy/scipy, not hand-rolled formulas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..judging.grades import expected_score, normalise, row_probabilities
from ..judging.rubrics import SCORES
from .rows import ABSOLUTE, is_disagreement, of_kind


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


def _correlations(x: np.ndarray, y: np.ndarray, constant: bool) -> dict:
    """Pearson, Spearman and Kendall of x and y (None where one side is constant)."""
    if constant:
        return dict(pearson=None, spearman=None, kendall=None)
    # Imported on first use: scipy.stats takes 0.8-1.8 s to import, which every `score` run paid at
    # its end although only inputs with gold scores (and `compare`) need it.
    from scipy import stats as sps
    return dict(pearson=_finite(sps.pearsonr(x, y).statistic), spearman=_finite(sps.spearmanr(x, y).statistic),
                kendall=_finite(sps.kendalltau(x, y).statistic))


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
        **_correlations(x, y, constant),
        qwk=quadratic_weighted_kappa(x.tolist(), y.tolist()),
        confusion=confusion_matrix(x.tolist(), y.tolist()).tolist(),
    )


@dataclass
class Correlation:
    """The Prometheus papers' table: Pearson, Spearman and Kendall τ (scipy's tau-b, as
    prometheus-eval's calculate_results) between the model's scores and the gold, over rows that
    have both. Uses each row's mean_score (--samples) when present, else its score, and gold_mean
    (benchmark files' mean of the annotators' scores) when present, else gold_score."""

    n: int
    pearson: float | None
    spearman: float | None
    kendall: float | None
    predicted: str     # which row field the model's side came from: mean_score, score or both
    gold: str          # gold_mean, gold_score or both

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _side(row: dict, mean_key: str, int_key: str) -> tuple[float | None, str]:
    mean = _number(row.get(mean_key))
    if mean is not None:
        return mean, mean_key
    value = row.get(int_key)
    return (float(value), int_key) if value in SCORES else (None, int_key)


def correlation(rows: Iterable[dict]) -> Correlation | None:
    """None when no row has both a predicted score and a gold one."""
    pairs, used_pred, used_gold = [], set(), set()
    for row in rows:
        if row.get("error"):
            continue
        pred, pred_key = _side(row, "mean_score", "score")
        gold, gold_key = _side(row, "gold_mean", "gold_score")
        if pred is not None and gold is not None:
            pairs.append((pred, gold))
            used_pred.add(pred_key)
            used_gold.add(gold_key)
    if not pairs:
        return None
    x = np.array([p for p, _ in pairs])
    y = np.array([g for _, g in pairs])
    constant = len(set(x.tolist())) < 2 or len(set(y.tolist())) < 2   # undefined then
    return Correlation(
        n=len(pairs),
        **_correlations(x, y, constant),
        predicted=used_pred.pop() if len(used_pred) == 1 else "both",
        gold=used_gold.pop() if len(used_gold) == 1 else "both",
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
    # Rows with a gold score but no predicted one: the heatmap cannot show them, so they are counted
    # beside it (the model card's "failed to output a score").
    unscored_with_gold: int = 0
    correlation: Correlation | None = None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("gold", "correlation")}
        out["histogram"] = {str(k): v for k, v in self.histogram.items()}
        out["mean_score"] = None if self.mean_score is None else round(self.mean_score, 4)
        out["gold"] = self.gold.as_dict() if self.gold else None
        out["correlation"] = self.correlation.as_dict() if self.correlation else None
        return out


def summarise(rows: Iterable[dict]) -> Summary:
    """Figures for the absolute rows (relative rows are report_relative's, left out here)."""
    rows = of_kind(rows, ABSOLUTE)
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
        unscored_with_gold=sum(1 for _, p in gold_pairs if p not in SCORES),
        correlation=correlation(rows),
    )


# ----------------------------------------------------------------------------------------------
# Picking rows: the batch screen's filters, kept here so a script can ask the same questions.

@dataclass(frozen=True)
class RowFilter:
    """Which result rows to show; every condition that is set must hold."""

    score: int | None = None       # predicted score equals this
    disagree: bool = False         # has a gold score and a predicted one, and they differ
    errors: bool = False           # an error row (bad input, too long, cancelled)

    def matches(self, row: dict) -> bool:
        if self.score is not None and row.get("score") != self.score:
            return False
        if self.disagree and not is_disagreement(row):
            return False
        if self.errors and not row.get("error"):
            return False
        return True

    @property
    def active(self) -> bool:
        return self.score is not None or self.disagree or self.errors

    def describe(self) -> str:
        parts = []
        if self.score is not None:
            parts.append(f"score {self.score}")
        if self.disagree:
            parts.append("disagrees with gold")
        if self.errors:
            parts.append("errors")
        return " + ".join(parts) if parts else "all rows"


def filter_rows(rows: Iterable[dict], row_filter: RowFilter) -> list[dict]:
    return [row for row in rows if row_filter.matches(row)]


# ----------------------------------------------------------------------------------------------
# Two runs over the same input (e.g. Q4_K_M against Q8_0): how far do their scores agree?

def _expected(row: dict) -> float | None:
    """Expected score from a row's P(1..5); None when the row has no probabilities."""
    values = row_probabilities(row)
    return expected_score(normalise(values)) if values and sum(values) > 0 else None


@dataclass
class Disagreement:
    id: str
    a: int | None
    b: int | None
    gold: int | None
    expected_a: float | None
    expected_b: float | None

    @property
    def gap(self) -> int:
        return abs(self.a - self.b) if self.a in SCORES and self.b in SCORES else 0

    @property
    def expected_gap(self) -> float:
        """How far the two runs' expected scores lie apart: ranks ties in `gap` by how sure each
        run was, so a 4-vs-5 between two confident runs comes before a coin flip."""
        if self.expected_a is None or self.expected_b is None:
            return 0.0
        return abs(self.expected_a - self.expected_b)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        for key in ("expected_a", "expected_b"):
            out[key] = None if out[key] is None else round(out[key], 4)
        out["gap"] = self.gap
        return out


@dataclass
class Comparison:
    agreement: Agreement              # rows: run A's scores, columns: run B's
    common: int                       # ids present in both files
    only_a: list[str]
    only_b: list[str]
    unscored_a: int                   # common ids A has no score for (error rows)
    unscored_b: int
    gold_mismatch: int                # common ids whose gold score differs: not the same input
    gold_a: Agreement | None          # each run against gold, when the input had gold scores
    gold_b: Agreement | None
    disagreements: list[Disagreement]  # the ones that disagree most, first

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("agreement", "gold_a", "gold_b", "disagreements")}
        out["agreement"] = self.agreement.as_dict()
        out["gold_a"] = self.gold_a.as_dict() if self.gold_a else None
        out["gold_b"] = self.gold_b.as_dict() if self.gold_b else None
        out["disagreements"] = [d.as_dict() for d in self.disagreements]
        return out


def compare_rows(rows_a: Iterable[dict], rows_b: Iterable[dict], *, top: int | None = 10) -> Comparison:
    """Join two result files on record id and measure how their scores agree.

    `disagreements` lists the pairs whose scores differ, largest gap first, then by how far the
    expected scores lie apart, at most `top` of them (None: all).
    """
    by_id_a = {str(r.get("id")): r for r in rows_a}
    by_id_b = {str(r.get("id")): r for r in rows_b}
    common = [i for i in by_id_a if i in by_id_b]
    scores_a = [by_id_a[i].get("score") for i in common]
    scores_b = [by_id_b[i].get("score") for i in common]

    gold_mismatch = 0
    gold: list[int | None] = []
    for i in common:
        ga, gb = by_id_a[i].get("gold_score"), by_id_b[i].get("gold_score")
        if ga in SCORES and gb in SCORES and ga != gb:
            gold_mismatch += 1
        gold.append(ga if ga in SCORES else gb if gb in SCORES else None)
    has_gold = any(g is not None for g in gold)

    pairs = [Disagreement(i, a, b, g, _expected(by_id_a[i]), _expected(by_id_b[i]))
             for i, a, b, g in zip(common, scores_a, scores_b, gold)
             if a in SCORES and b in SCORES and a != b]
    # sorted() is stable, so equal pairs keep the input order.
    pairs.sort(key=lambda d: (-d.gap, -d.expected_gap))
    return Comparison(
        agreement=agreement(scores_a, scores_b),
        common=len(common),
        only_a=[i for i in by_id_a if i not in by_id_b],
        only_b=[i for i in by_id_b if i not in by_id_a],
        unscored_a=sum(1 for s in scores_a if s not in SCORES),
        unscored_b=sum(1 for s in scores_b if s not in SCORES),
        gold_mismatch=gold_mismatch,
        gold_a=agreement(gold, scores_a) if has_gold else None,
        gold_b=agreement(gold, scores_b) if has_gold else None,
        disagreements=pairs if top is None else pairs[:top],
    )
