"""The reports' figures (reports/absolute.py, pairwise.py) against independent computations:
hand-worked small cases, plain-Python formulas written here from their definitions, and
scipy.stats called directly."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
from scipy import stats

from prom_local.reports.absolute import RowFilter, agreement, compare_rows, filter_rows, summarise


# -- independent definitions (no numpy/scipy/sklearn) ---------------------------------------------

def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def average_ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y):
    return pearson(average_ranks(x), average_ranks(y))


def kendall_tau_b(x, y):
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx * dy > 0:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt(
        (concordant + discordant + ties_x) * (concordant + discordant + ties_y))


def qwk(x, y, k=5):
    """Cohen's kappa with weights (i-j)^2 over the fixed categories 1..k."""
    n = len(x)
    observed = [[0] * k for _ in range(k)]
    for a, b in zip(x, y):
        observed[a - 1][b - 1] += 1
    row = [sum(observed[i]) for i in range(k)]
    col = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    num = sum((i - j) ** 2 * observed[i][j] for i in range(k) for j in range(k))
    den = sum((i - j) ** 2 * row[i] * col[j] / n for i in range(k) for j in range(k))
    return 1 - num / den


GOLD = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 3, 4]
PRED = [1, 3, 3, 4, 4, 5, 2, 3, 2, 2, 5, 4]


def test_hand_worked_small_case():
    # gold 1,2,3 vs predicted 1,2,3 except one 3->1: exact 2/3, within-1 2/3.
    a = agreement([1, 2, 3], [1, 2, 1])
    assert a.n == 3
    assert a.exact == pytest.approx(2 / 3)
    assert a.within1 == pytest.approx(2 / 3)
    # QWK by hand: observed weighted disagreement 4 (one pair at distance 2);
    # expected = sum w_ij r_i c_j / n with r=(1,1,1), c=(2,1,0) -> (0*2+1*1+ 1*2+0*1 + 4*2+1*1)/3 = 12/3 = 4
    assert a.qwk == pytest.approx(1 - 4 / 4)
    assert a.confusion[2][0] == 1 and a.confusion[0][0] == 1 and a.confusion[1][1] == 1


def test_perfect_and_chance_agreement():
    perfect = agreement([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert (perfect.exact, perfect.within1, perfect.qwk) == (1.0, 1.0, 1.0)
    assert perfect.pearson == pytest.approx(1.0) and perfect.kendall == pytest.approx(1.0)
    # Every gold score paired with every prediction once: agreement no better than chance.
    chance = agreement([1, 1, 2, 2], [1, 2, 1, 2])
    assert chance.qwk == pytest.approx(0.0)
    assert chance.exact == 0.5


def test_figures_match_independent_definitions_and_scipy():
    a = agreement(GOLD, PRED)
    assert a.n == len(GOLD)
    assert a.exact == pytest.approx(sum(g == p for g, p in zip(GOLD, PRED)) / len(GOLD))
    assert a.within1 == pytest.approx(sum(abs(g - p) <= 1 for g, p in zip(GOLD, PRED)) / len(GOLD))
    assert a.pearson == pytest.approx(pearson(GOLD, PRED))
    assert a.spearman == pytest.approx(spearman(GOLD, PRED))
    assert a.kendall == pytest.approx(kendall_tau_b(GOLD, PRED))
    assert a.qwk == pytest.approx(qwk(GOLD, PRED))
    assert a.pearson == pytest.approx(stats.pearsonr(GOLD, PRED).statistic)
    assert a.spearman == pytest.approx(stats.spearmanr(GOLD, PRED).statistic)
    assert a.kendall == pytest.approx(stats.kendalltau(GOLD, PRED).statistic)
    # The confusion matrix: gold rows, predicted columns.
    for g in range(1, 6):
        for p in range(1, 6):
            assert a.confusion[g - 1][p - 1] == sum(1 for x, y in zip(GOLD, PRED) if (x, y) == (g, p))


def test_pairs_without_both_scores_are_left_out():
    a = agreement([1, 2, None, 4, 5], [1, None, 3, 4, 2])
    assert a.n == 3
    assert a.qwk == pytest.approx(qwk([1, 4, 5], [1, 4, 2]))
    constant = agreement([3, 3, 3], [1, 2, 3])
    assert constant.pearson is None and constant.spearman is None   # undefined, not NaN


def rows_from(scores, *, gold=None, probs=None):
    out = []
    for i, s in enumerate(scores):
        row = {"id": f"x{i}", "score": s, "gold_score": gold[i] if gold else None,
               "error": None if s is not None else "too long", "forced": False}
        if probs and probs[i] is not None:
            row["probabilities"] = {str(k + 1): p for k, p in enumerate(probs[i])}
        out.append(row)
    return out


def test_summary_counts_unscored_gold_rows():
    rows = rows_from([1, 2, None, 4], gold=[1, 3, 5, 4])
    summary = summarise(rows)
    assert summary.rows == 4 and summary.scored == 3 and summary.errors == 1
    assert summary.unscored_with_gold == 1
    assert summary.gold.n == 3


def test_compare_joins_on_id_and_ranks_disagreements():
    a = rows_from([1, 2, 3, 4, 5], gold=[1, 2, 3, 4, 5],
                  probs=[None, (0, .9, .1, 0, 0), (0, 0, .5, .5, 0), (0, 0, 0, 1, 0), None])
    b = rows_from([1, 4, 4, 5, None], gold=[1, 2, 3, 4, 5],
                  probs=[None, (0, 0, 0, 1, 0), (0, 0, .4, .6, 0), (0, 0, 0, 0, 1), None])
    b[4]["id"] = "only-b"
    cmp = compare_rows(a, b)
    assert cmp.common == 4
    assert cmp.only_a == ["x4"] and cmp.only_b == ["only-b"]
    expected = agreement([1, 2, 3, 4], [1, 4, 4, 5])
    assert cmp.agreement.qwk == pytest.approx(expected.qwk)
    assert cmp.agreement.exact == pytest.approx(0.25)
    # Largest gap first (2 vs 4); among the gap-1 pairs, the one whose expected scores lie
    # further apart (4 vs 5, both certain) before the near coin flip (3 vs 4).
    assert [d.id for d in cmp.disagreements] == ["x1", "x3", "x2"]
    assert cmp.disagreements[0].gap == 2
    assert cmp.disagreements[1].expected_gap == pytest.approx(1.0)
    assert cmp.gold_a.exact == 1.0 and cmp.gold_b.exact == pytest.approx(0.25)
    assert compare_rows(a, b, top=1).disagreements[0].id == "x1"


def test_compare_flags_different_inputs():
    a = rows_from([1, 2], gold=[1, 2])
    b = rows_from([1, 2], gold=[1, 5])
    assert compare_rows(a, b).gold_mismatch == 1


def test_row_filters():
    rows = rows_from([1, 2, None, 4, 4], gold=[1, 3, 5, 4, 5])
    assert [r["id"] for r in filter_rows(rows, RowFilter())] == ["x0", "x1", "x2", "x3", "x4"]
    assert [r["id"] for r in filter_rows(rows, RowFilter(score=4))] == ["x3", "x4"]
    assert [r["id"] for r in filter_rows(rows, RowFilter(disagree=True))] == ["x1", "x4"]
    assert [r["id"] for r in filter_rows(rows, RowFilter(errors=True))] == ["x2"]
    assert [r["id"] for r in filter_rows(rows, RowFilter(score=4, disagree=True))] == ["x4"]
    assert RowFilter(score=4, disagree=True).describe() == "score 4 + disagrees with gold"
