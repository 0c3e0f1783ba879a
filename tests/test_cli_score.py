"""`prom-local score` end to end through the real CLI with the real model (in a subprocess where a
signal is the point, else in this process): real
probabilities and token counts in the rows, resume after a real SIGKILL with no duplicate and no gap,
and Ctrl-C. Everything that needs no real numbers (rows, error rows, resume, --retry-errors, exit
codes, grade, info) runs in-process on a scripted engine in test_cli_inprocess.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import cli_env, in_order, invoke, short_record, write_jsonl

pytestmark = pytest.mark.slow  # each test decodes with the real model

FAST = ["--max-tokens", "6", "--ctx", "1024", "--gpu-layers", "0"]


def _rows(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_score_file_with_bad_rows(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [
        short_record(1, score=2), "{broken", short_record(2, score=4),
        {"id": "no-response", "instruction": "q", "rubric": {}}, short_record(1)])   # last: duplicate id r1
    out = tmp_path / "out.jsonl"
    result = invoke("score", str(src), "-o", str(out), "--model", str(smollm2), *FAST,
                    "--summary-json", str(tmp_path / "summary.json"))
    assert result.returncode == 2, result.stderr          # 2: some records were error rows
    rows = in_order(_rows(out), ["r1", "2", "r2", "no-response", "r1@line5"])   # rows as records finished
    assert [r["error"] is None for r in rows] == [True, False, True, False, False]
    assert f"{src}:2: invalid JSON" in rows[1]["error"]
    assert f"{src}:4: field 'response'" in rows[3]["error"]
    assert "duplicate id 'r1' (first on line 1)" in rows[4]["error"]
    for row in (rows[0], rows[2]):
        assert row["score"] in (1, 2, 3, 4, 5) and abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] <= 6 and row["seconds"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 5 and summary["errors"] == 3 and summary["gold"]["n"] == 2
    assert "agreement with gold" in result.stderr and "Traceback" not in result.stderr
    assert "gold vs predicted" in result.stderr   # the heatmap, as `prom-local report` draws it


def test_resume_after_sigkill_has_no_duplicate_and_no_gap(tmp_path, smollm2):
    records = [short_record(i) for i in range(6)]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out), "--model", str(smollm2),
           *FAST, "--quiet"]
    env = cli_env()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_rows(out))
    assert 2 <= done_before < 6, "the kill should land mid-run"
    # A torn write on top, as a kill inside write() would leave:
    with out.open("ab") as handle:
        handle.write(b'{"id": "r5", "score": ')
    # The resume itself needs no process of its own.
    result = invoke("score", str(src), "-o", str(out), "--model", str(smollm2), *FAST)
    assert result.returncode == 0, result.stderr
    in_order(_rows(out), [f"r{i}" for i in range(6)])   # exactly once each
    assert "torn last line" in result.stderr
    assert f"({done_before} already there)" in result.stderr
    again = invoke("score", str(src), "-o", str(out), "--model", str(smollm2), *FAST)
    assert again.returncode == 0 and len(_rows(out)) == 6


def test_ctrl_c_keeps_rows_and_says_how_to_resume(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(6)])
    out = tmp_path / "out.jsonl"
    env = cli_env()
    # --parallel 1: rows are written as records finish, and records decoded side by side finish in
    # the same step; one at a time leaves five records' time for the SIGINT to land mid-run.
    proc = subprocess.Popen([sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out),
                             "--model", str(smollm2), *FAST, "--parallel", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and (not out.exists() or not out.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    rows = _rows(out)
    assert 1 <= len(rows) < 6 and len({r["id"] for r in rows}) == len(rows)
