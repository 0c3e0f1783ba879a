"""`report` and `compare` on relative (pairwise) rows, written here by hand exactly as the shared
contract for relative result rows lays them out: rows are data, so no model runs."""

from __future__ import annotations

import json

import pytest

from helpers import invoke
from prom_local.reports.absolute import is_disagreement, summarise
from prom_local.reports.pairwise import compare_relative, summarise_relative


def rel_row(i, winner, gold, *, p_a=None, forced=False, orders=None, error=None) -> dict:
    """One relative row as `score` writes it; `orders` = (winner AB, winner BA) for --both-orders."""
    p_a = p_a if p_a is not None else (0.8 if winner == "A" else 0.2 if winner == "B" else 0.5)
    row = {"id": f"p{i}", "mode": "relative", "winner": winner, "feedback": "A is better.",
           "output": f"A is better. [RESULT] {winner}", "probabilities": {"A": p_a, "B": 1 - p_a},
           "label_mass": 0.9, "forced": forced, "finish_reason": "stop", "prompt_tokens": 300,
           "completion_tokens": 20, "seconds": 1.0, "gold_winner": gold, "error": error}
    if orders is not None:
        ab, ba = orders
        row["orders"] = [{"order": "AB", "winner": ab, "probabilities": {"A": p_a, "B": 1 - p_a},
                          "forced": forced, "output": f"[RESULT] {ab}"},
                         {"order": "BA", "winner": ba, "probabilities": {"A": p_a, "B": 1 - p_a},
                          "forced": False, "output": "[RESULT] A"}]
        row["consistent"] = ab == ba
        if ab != ba:
            row["winner"], row["tie"] = None, True
    if error:
        row.update(winner=None, probabilities=None, output="", feedback="")
    return row


# Ten pairs: 6 right, 1 wrong, 1 tie with gold (wrong), 1 forced right, 1 error; 4 in both orders.
ROWS = [
    rel_row(0, "A", "A", p_a=0.9, orders=("A", "A")),
    rel_row(1, "B", "B", p_a=0.3, orders=("B", "B")),
    rel_row(2, "A", "B", p_a=0.7, orders=("A", "A")),            # consistent but wrong
    rel_row(3, None, "A", p_a=0.55, orders=("A", "B")),          # inconsistent: a tie
    rel_row(4, "A", "A", p_a=0.95),
    rel_row(5, "B", "B", p_a=0.1),
    rel_row(6, "A", "A", p_a=0.65),
    rel_row(7, "B", "B", p_a=0.45, forced=True),
    rel_row(8, "A", None, p_a=0.6),                             # no gold
    rel_row(9, None, "A", error="prompt too long"),
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_relative_figures_by_hand():
    rel = summarise_relative(ROWS)
    assert rel.rows == 10 and rel.errors == 1 and rel.forced == 1
    assert rel.verdicts == {"A": 5, "B": 3, "tie": 1, "none": 1}
    acc = rel.accuracy
    # Gold rows without error: p0..p7 = 8; right: p0 p1 p4 p5 p6 p7 = 6; the tie p3 counts wrong.
    assert (acc.n, acc.correct, acc.ties, acc.forced, acc.forced_correct) == (8, 6, 1, 1, 1)
    assert acc.accuracy == pytest.approx(6 / 8)
    assert acc.accuracy_unforced == pytest.approx(5 / 7)
    cons = rel.consistency
    assert (cons.n, cons.consistent) == (4, 3)
    assert cons.rate == pytest.approx(0.75) and cons.tie_rate == pytest.approx(0.25)
    cal = rel.calibration
    p_gold = [0.9, 0.7, 0.3, 0.55, 0.95, 0.9, 0.65, 0.55]   # P(gold winner) of p0..p7
    assert cal.n == 8
    assert cal.mean_p_gold == pytest.approx(sum(p_gold) / 8)
    assert cal.brier == pytest.approx(sum((1 - p) ** 2 for p in p_gold) / 8)
    assert sum(b["n"] for b in cal.bins) == 8
    top = next(b for b in cal.bins if b["from"] == 0.9)   # p0, p4, p5: all right
    assert top["n"] == 3 and top["accuracy"] == 1.0


def test_absolute_figures_ignore_relative_rows_and_disagreement_covers_both():
    absolute = [{"id": "a1", "score": 4, "gold_score": 4}, {"id": "a2", "score": 2, "gold_score": 3}]
    summary = summarise(absolute + ROWS)
    assert summary.rows == 2 and summary.gold.n == 2
    assert summarise_relative(absolute) is None
    assert [r["id"] for r in ROWS if is_disagreement(r)] == ["p2", "p3"]


def test_report_cli_relative_and_mixed(tmp_path):
    path = write(tmp_path / "pairs.jsonl", ROWS)
    result = invoke("report", str(path), columns=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "relative rows 10 · A 5 · B 3 · tie 1 · none 1 · forced 1 · errors 1" in out
    assert "accuracy" in out and "75.0%" in out and "n=8 · 1 tie(s) counted wrong" in out
    assert "consistent" in out and "n=4 in both orders" in out
    assert "tie rate" in out and "25.0%" in out
    assert "No gold scores" not in out        # no absolute section for an all-relative file

    data = json.loads(invoke("report", str(path), "--json").stdout)
    assert data["rows"] == 0 and data["relative"]["accuracy"]["accuracy"] == 0.75
    assert data["relative"]["consistency"] == {"n": 4, "consistent": 3, "rate": 0.75, "tie_rate": 0.25}

    mixed = write(tmp_path / "mixed.jsonl", [{"id": "a1", "score": 4, "gold_score": 4},
                                             {"id": "a2", "score": 2, "gold_score": 3}] + ROWS)
    result = invoke("report", str(mixed), columns=120)
    assert result.returncode == 0, result.stderr
    assert "rows 2 · scored 2" in result.stdout and "relative rows 10" in result.stdout
    data = json.loads(invoke("report", str(mixed), "--json").stdout)
    assert data["rows"] == 2 and data["gold"]["n"] == 2 and data["relative"]["rows"] == 10


def test_compare_relative_runs(tmp_path):
    a = write(tmp_path / "a.jsonl", ROWS)
    flipped = [dict(r) for r in ROWS]
    flipped[0].update(winner="B", probabilities={"A": 0.2, "B": 0.8})     # p0 now wrong
    flipped[5].update(winner="A", probabilities={"A": 0.6, "B": 0.4})     # p5 now wrong
    b = write(tmp_path / "b.jsonl", flipped)
    cmp = compare_relative(ROWS, flipped)
    assert cmp.common == 10 and cmp.decided_both == 8 and cmp.same_winner == 6
    assert [d["id"] for d in cmp.disagreements] == ["p0", "p5"]   # surest opposite first
    assert cmp.accuracy_a.correct == 6 and cmp.accuracy_b.correct == 4

    result = invoke("compare", str(a), str(b), columns=120)
    assert result.returncode == 0, result.stderr
    assert "same winner: 6 of 8 decided in both (75.0%)" in result.stdout
    data = json.loads(invoke("compare", str(a), str(b), "--json").stdout)
    assert data["mode"] == "relative" and data["agreement"] == 0.75

    absolute = write(tmp_path / "abs.jsonl", [{"id": "p0", "score": 3}])
    mismatch = invoke("compare", str(a), str(absolute))
    assert mismatch.returncode == 1
    assert "holds relative rows but" in mismatch.stderr and "abs.jsonl holds absolute rows" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


def test_score_exit_code_and_summary_count_relative_error_rows(tmp_path, smollm2, monkeypatch):
    """`score` ends with exit 2 when the results file holds error rows, pairwise ones included, and
    its summary shows the pairwise figures. Every id is already in the results file, so nothing is
    graded (the engine is a scripted one and is never asked)."""
    import prom_local.cli.options as cli_options
    from fake_engine import FakeEngine
    from prom_local.judging.judge import Judge

    monkeypatch.setattr(cli_options, "Judge", lambda model_path, *, profile, engine, sampling, on_status=None:
                        Judge.with_engine(FakeEngine(model_path), profile=profile, sampling=sampling))
    rubric = {"criteria": "Which is better?", **{f"score{s}_description": str(s) for s in range(1, 6)}}
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "instruction": "Q?", "response_A": "a", "response_B": "b",
                                       "rubric": rubric}) + "\n" for r in ROWS), "utf-8")
    out = write(tmp_path / "pairs.prom.jsonl", ROWS)            # p9 is an error row
    summary_json = tmp_path / "summary.json"
    result = invoke("score", str(src), "-o", str(out), "--model", str(smollm2), "--ctx", "1024", "--profile", "prometheus-2",
                    "--summary-json", str(summary_json), columns=120)
    assert result.returncode == 2, result.stderr
    assert "relative rows 10" in result.stderr and "75.0%" in result.stderr
    assert json.loads(summary_json.read_text())["relative"]["errors"] == 1

    ok = write(tmp_path / "ok.prom.jsonl", ROWS[:9])
    src.write_text("".join(line + "\n" for line in src.read_text().splitlines()[:9]), "utf-8")
    assert invoke("score", str(src), "-o", str(ok), "--model", str(smollm2), "--ctx", "1024").returncode == 0
