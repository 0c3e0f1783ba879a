"""Figures for relative (pairwise) result rows: accuracy against the gold winner, position
consistency, tie rate and how well P(A)/P(B) are calibrated; and two relative runs compared.

Conventions, so the numbers line up with the published ones:
- accuracy counts a tie (the two orders disagreed, --both-orders) as a wrong verdict when the gold
  names a winner, as prometheus-eval's calculate_results does for any verdict other than the gold;
- a position-inconsistent pair is a tie (the MT-Bench paper's convention, Zheng et al. 2023);
- rows with an error are counted but left out of every rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .rows import RELATIVE, of_kind

LABELS = ("A", "B")
# Confidence bins for calibration: max(P(A), P(B)) lies in [0.5, 1].
BIN_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def pair_probabilities(row: dict) -> tuple[float, float] | None:
    """(P(A), P(B)) renormalised over A and B, or None when the row has none usable."""
    probs = row.get("probabilities")
    if not isinstance(probs, dict):
        return None
    try:
        a, b = float(probs["A"]), float(probs["B"])
    except (KeyError, TypeError, ValueError):
        return None
    total = a + b
    if not (math.isfinite(total) and total > 0 and a >= 0 and b >= 0):
        return None
    return a / total, b / total


def verdict(row: dict) -> str:
    """'A', 'B', 'tie' (inconsistent orders) or 'none' (an error, or no verdict at all)."""
    if row.get("error"):
        return "none"
    winner = row.get("winner")
    if winner in LABELS:
        return winner
    return "tie" if row.get("tie") else "none"


def _gold(row: dict) -> str | None:
    gold = row.get("gold_winner")
    return gold if gold in LABELS else None


@dataclass
class Accuracy:
    n: int                     # rows with a gold winner and no error
    correct: int
    ties: int                  # of n: inconsistent pairs, counted wrong
    forced: int                # of n: verdicts forced from P(A)/P(B) (no [RESULT] in the output)
    forced_correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def accuracy_unforced(self) -> float | None:
        n = self.n - self.forced
        return (self.correct - self.forced_correct) / n if n else None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["accuracy"] = _round(self.accuracy)
        out["accuracy_unforced"] = _round(self.accuracy_unforced)
        return out


@dataclass
class Consistency:
    """--both-orders rows: does the verdict survive swapping the responses?"""

    n: int
    consistent: int

    @property
    def rate(self) -> float | None:
        return self.consistent / self.n if self.n else None

    @property
    def tie_rate(self) -> float | None:   # inconsistent = tie (MT-Bench convention)
        return (self.n - self.consistent) / self.n if self.n else None

    def as_dict(self) -> dict:
        return {"n": self.n, "consistent": self.consistent, "rate": _round(self.rate),
                "tie_rate": _round(self.tie_rate)}


@dataclass
class Calibration:
    """P(A)/P(B) against the gold winner: mean probability on the gold side, Brier score, and
    accuracy per confidence bin (a calibrated judge is right 70% of the time when 70% sure)."""

    n: int
    mean_p_gold: float
    brier: float
    ece: float                 # expected calibration error over the bins
    bins: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"n": self.n, "mean_p_gold": _round(self.mean_p_gold), "brier": _round(self.brier),
                "ece": _round(self.ece),
                "bins": [{k: _round(v) for k, v in b.items()} for b in self.bins]}


def calibration(rows: list[dict]) -> Calibration | None:
    points = []   # (P(gold), confidence, right)
    for row in rows:
        probs, gold = pair_probabilities(row), _gold(row)
        if probs is None or gold is None or row.get("error"):
            continue
        p_gold = probs[LABELS.index(gold)]
        confidence = max(probs)
        points.append((p_gold, confidence, p_gold > 0.5))   # an even split is not a right call
    if not points:
        return None
    n = len(points)
    bins, ece = [], 0.0
    for lo, hi in zip(BIN_EDGES, BIN_EDGES[1:]):
        inside = [p for p in points if lo <= p[1] < hi or (hi == 1.0 and p[1] == 1.0)]
        if not inside:
            continue
        conf = sum(p[1] for p in inside) / len(inside)
        acc = sum(p[2] for p in inside) / len(inside)
        ece += len(inside) / n * abs(conf - acc)
        bins.append({"from": lo, "to": hi, "n": len(inside), "confidence": conf, "accuracy": acc})
    return Calibration(n=n, mean_p_gold=sum(p[0] for p in points) / n,
                       brier=sum((1 - p[0]) ** 2 for p in points) / n, ece=ece, bins=bins)


@dataclass
class RelativeSummary:
    rows: int
    errors: int
    forced: int
    verdicts: dict[str, int]            # A, B, tie, none
    accuracy: Accuracy | None           # None: no row has a gold winner
    consistency: Consistency | None     # None: no --both-orders rows
    calibration: Calibration | None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("accuracy", "consistency", "calibration")}
        for key in ("accuracy", "consistency", "calibration"):
            value = getattr(self, key)
            out[key] = value.as_dict() if value is not None else None
        return out


def summarise_relative(rows: Iterable[dict]) -> RelativeSummary | None:
    """Figures for the relative rows among `rows`; None when there are none."""
    rows = of_kind(rows, RELATIVE)
    if not rows:
        return None
    verdicts = {"A": 0, "B": 0, "tie": 0, "none": 0}
    for row in rows:
        verdicts[verdict(row)] += 1
    graded = [r for r in rows if not r.get("error")]
    with_gold = [r for r in graded if _gold(r) is not None]
    both = [r for r in graded if isinstance(r.get("orders"), list) and isinstance(r.get("consistent"), bool)]
    accuracy = None
    if with_gold:
        forced = [r for r in with_gold if r.get("forced")]
        accuracy = Accuracy(n=len(with_gold), correct=sum(verdict(r) == _gold(r) for r in with_gold),
                            ties=sum(verdict(r) == "tie" for r in with_gold), forced=len(forced),
                            forced_correct=sum(verdict(r) == _gold(r) for r in forced))
    return RelativeSummary(
        rows=len(rows), errors=len(rows) - len(graded), forced=sum(bool(r.get("forced")) for r in graded),
        verdicts=verdicts, accuracy=accuracy,
        consistency=Consistency(len(both), sum(r["consistent"] for r in both)) if both else None,
        calibration=calibration(graded))


# ----------------------------------------------------------------------------------------------
# Two relative runs over the same input (two quantisations, or one order against both orders).

@dataclass
class RelativeComparison:
    common: int
    only_a: list[str]
    only_b: list[str]
    decided_both: int            # common ids where both runs name a winner
    same_winner: int             # of decided_both
    gold_mismatch: int           # common ids whose gold winners differ: not the same input
    accuracy_a: Accuracy | None  # each run against gold over the common ids
    accuracy_b: Accuracy | None
    disagreements: list[dict]    # id, verdict_a, verdict_b, p_a (P(A) in run A), p_b, gold

    @property
    def agreement(self) -> float | None:
        return self.same_winner / self.decided_both if self.decided_both else None

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("accuracy_a", "accuracy_b")}
        out["agreement"] = _round(self.agreement)
        out["accuracy_a"] = self.accuracy_a.as_dict() if self.accuracy_a else None
        out["accuracy_b"] = self.accuracy_b.as_dict() if self.accuracy_b else None
        return out


def compare_relative(rows_a: Iterable[dict], rows_b: Iterable[dict], *,
                     top: int | None = 10) -> RelativeComparison:
    by_a = {str(r.get("id")): r for r in of_kind(rows_a, RELATIVE)}
    by_b = {str(r.get("id")): r for r in of_kind(rows_b, RELATIVE)}
    common = [i for i in by_a if i in by_b]
    decided = [i for i in common if verdict(by_a[i]) in LABELS and verdict(by_b[i]) in LABELS]
    gold_mismatch = sum(1 for i in common if _gold(by_a[i]) and _gold(by_b[i])
                        and _gold(by_a[i]) != _gold(by_b[i]))

    def accuracy(rows: list[dict]) -> Accuracy | None:
        return getattr(summarise_relative(rows), "accuracy", None) if rows else None

    def p_a(row: dict) -> float | None:
        probs = pair_probabilities(row)
        return None if probs is None else round(probs[0], 4)

    differing = [i for i in common if verdict(by_a[i]) != verdict(by_b[i])]
    # Most informative first: both runs sure of opposite winners.
    differing.sort(key=lambda i: -abs((p_a(by_a[i]) or 0.5) - (p_a(by_b[i]) or 0.5)))
    shown = differing if top is None else differing[:top]
    return RelativeComparison(
        common=len(common), only_a=[i for i in by_a if i not in by_b],
        only_b=[i for i in by_b if i not in by_a], decided_both=len(decided),
        same_winner=sum(by_a[i]["winner"] == by_b[i]["winner"] for i in decided),
        gold_mismatch=gold_mismatch,
        accuracy_a=accuracy([by_a[i] for i in common]), accuracy_b=accuracy([by_b[i] for i in common]),
        disagreements=[{"id": i, "a": verdict(by_a[i]), "b": verdict(by_b[i]), "p_a": p_a(by_a[i]),
                        "p_b": p_a(by_b[i]), "gold": _gold(by_a[i]) or _gold(by_b[i])} for i in shown])
