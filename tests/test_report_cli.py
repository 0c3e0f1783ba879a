"""`prom-local report` and `prom-local compare` as a person runs them, through the CLI's entry point
(in this process: the command, its output and its exit code, without an interpreter start each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import invoke
from prom_local.runs.results_reader import read_rows
from prom_local.reports.absolute import compare_rows, summarise


def cli(*args: str):
    return invoke(*args, columns=100)


def write_rows(path: Path, scores, gold=None, probs=None) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i, score in enumerate(scores):
            row = {"id": f"q{i}", "score": score, "feedback": "좋은 답변입니다.", "forced": False,
                   "gold_score": gold[i] if gold else None,
                   "error": None if score is not None else "prompt too long"}
            if probs:
                row["probabilities"] = {str(k + 1): p for k, p in enumerate(probs[i])}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


GOLD = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]
Q4 = [1, 3, 3, 4, 4, 5, 2, 3, 2, None]
Q8 = [1, 2, 3, 4, 5, 4, 2, 3, 3, 1]


def test_report_prints_figures_and_heatmap(tmp_path):
    out = write_rows(tmp_path / "run.jsonl", Q4, GOLD)
    result = cli("report", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    gold = summarise(read_rows(out)).gold
    for label, value in (("exact agreement", gold.exact), ("within 1", gold.within1),
                         ("Pearson r", gold.pearson), ("Spearman ρ", gold.spearman),
                         ("Kendall τ", gold.kendall), ("quadratic κ", gold.qwk)):
        assert any(line.split()[-1:] == [f"{value:.3f}"] and label in line for line in text.splitlines()), label
    assert "gold ↓  predicted →" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    for g, counts in zip(range(1, 6), gold.confusion):
        assert " ".join(map(str, [g, *counts, sum(counts)])) in lines
    assert "+1 with no predicted score" in text   # q9 has gold 1 but no score

    as_json = json.loads(cli("report", str(out), "--json").stdout)
    assert as_json["gold"]["qwk"] == round(gold.qwk, 4)
    assert as_json["unscored_with_gold"] == 1


def test_report_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = write_rows(tmp_path / "run.jsonl", Q4, GOLD)
    png = tmp_path / "heatmap.png"
    result = cli("report", str(out), "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_without_gold_and_bad_files(tmp_path):
    out = write_rows(tmp_path / "run.jsonl", [1, 2, 3])
    result = cli("report", str(out))
    assert result.returncode == 0
    assert "No gold scores" in result.stdout and "scores 1:1  2:1  3:1  4:0  5:0" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "score": 3}\nnot json\n')
    broken = cli("report", str(bad))
    assert broken.returncode == 4 and "bad.jsonl:2: not valid JSON" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_compare_two_runs(tmp_path):
    a = write_rows(tmp_path / "q4.jsonl", Q4, GOLD)
    b = write_rows(tmp_path / "q8.jsonl", Q8, GOLD)
    result = cli("compare", str(a), str(b))
    assert result.returncode == 0, result.stderr
    cmp = compare_rows(read_rows(a), read_rows(b))
    text = result.stdout
    assert f"records in both: {cmp.common}" in text
    for label, value in (("exact agreement", cmp.agreement.exact), ("quadratic κ", cmp.agreement.qwk),
                         ("Kendall τ", cmp.agreement.kendall)):
        assert any(label in line and f"{value:.3f}" in line for line in text.splitlines()), label
    assert "each run against gold" in text
    assert "records that disagree most" in text
    listed = [line.split()[1] for line in text.splitlines() if line.startswith("│ q")]
    assert listed == [d.id for d in cmp.disagreements]
    assert listed[0] == "q1" or cmp.disagreements[0].gap >= cmp.disagreements[-1].gap

    as_json = json.loads(cli("compare", str(a), str(b), "--json", "--top", "2").stdout)
    assert as_json["agreement"]["qwk"] == round(cmp.agreement.qwk, 4)
    assert len(as_json["disagreements"]) == 2


def test_compare_files_from_different_inputs(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [1, 2])
    other = tmp_path / "b.jsonl"
    other.write_text('{"id": "zzz", "score": 3}\n')
    result = cli("compare", str(a), str(other))
    assert result.returncode == 1
    assert "share no record ids" in result.stderr and "Traceback" not in result.stderr
