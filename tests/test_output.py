"""Readers of results files (`report`, `compare`, the TUI's review): lock-free, and an id written
more than once is counted once, with a warning, never twice without a word."""

import json

import pytest
from typer.testing import CliRunner

from prom_local.cli import app
from prom_local.errors import OutputError
from prom_local.runs.results_reader import read_results, read_rows


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def row(i, score, gold=None):
    return {"id": f"r{i}", "score": score, "gold_score": gold, "error": None, "forced": False,
            "probabilities": {str(s): (1.0 if s == score else 0.0) for s in range(1, 6)}}


def test_repeated_ids_are_counted_once_by_their_first_row(tmp_path):
    # What two writers appending to the same file used to leave: every row twice, interleaved.
    path = write_rows(tmp_path / "out.jsonl", [row(1, 5, 5), row(1, 5, 5), row(2, 1, 2), row(3, 4, 4),
                                               row(2, 3, 2), row(3, 4, 4), row(2, 1, 2)])
    results = read_results(path)
    assert [(r["id"], r["score"]) for r in results.rows] == [("r1", 5), ("r2", 1), ("r3", 4)]
    assert results.repeated == {"r1": [1, 2], "r2": [3, 5, 7], "r3": [4, 6]}
    assert results.extra_rows == 4
    assert results.warning() == (f"{path}: 3 id(s) appear more than once (e.g. 'r1' on lines 1, 2); each is "
                                 "counted once, by its first row, and 4 later row(s) are left out")
    assert read_results(write_rows(tmp_path / "ok.jsonl", [row(1, 5)])).warning() is None


def test_rows_may_hold_unicode_line_separators(tmp_path):
    # Rows are written with ensure_ascii=False: U+2028 and U+0085 stay raw inside a JSON string.
    path = write_rows(tmp_path / "out.jsonl", [{"id": "a", "feedback": "one\u2028two\x85three"}, row(2, 3)])
    assert [r["id"] for r in read_rows(path)] == ["a", "r2"]


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(OutputError, match="no such file"):
        read_results(tmp_path / "missing.jsonl")
    with pytest.raises(OutputError, match="is a directory"):
        read_results(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\nnope\n')
    with pytest.raises(OutputError, match=r"bad.jsonl:2: not valid JSON"):
        read_results(tmp_path / "bad.jsonl")


def test_report_and_compare_warn_and_count_each_id_once(tmp_path):
    once = write_rows(tmp_path / "once.jsonl", [row(1, 5, 5), row(2, 1, 2), row(3, 4, 4)])
    twice = write_rows(tmp_path / "twice.jsonl", [row(1, 5, 5), row(2, 1, 2), row(1, 5, 5), row(3, 4, 4),
                                                  row(2, 1, 2), row(3, 4, 4)])
    runner = CliRunner()
    clean = runner.invoke(app, ["report", str(once), "--json"])
    doubled = runner.invoke(app, ["report", str(twice), "--json"])
    assert clean.exit_code == 0 and doubled.exit_code == 0, doubled.output
    assert "warning" not in clean.stderr
    assert doubled.stderr.count("warning: ") == 1 and "3 id(s) appear more than once" in doubled.stderr
    a, b = json.loads(clean.stdout), json.loads(doubled.stdout)
    assert b.pop("repeated_ids") == 3 and a.pop("repeated_ids") == 0
    assert a == b and b["rows"] == 3 and b["gold"]["n"] == 3   # the same figures as the clean file

    cmp = runner.invoke(app, ["compare", str(once), str(twice), "--json"])
    assert cmp.exit_code == 0, cmp.output
    assert cmp.stderr.count("warning: ") == 1 and str(twice) in cmp.stderr
    figures = json.loads(cmp.stdout)
    assert figures["common"] == 3 and figures["agreement"]["n"] == 3
    assert (figures["repeated_ids_a"], figures["repeated_ids_b"]) == (0, 3)
