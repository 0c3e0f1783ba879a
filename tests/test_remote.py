"""`score/grade --server`: a real `prom-local serve` process on loopback (SmolLM2), and the real CLI
against it. Same rows as a local run, resume after the server dies, a refused key."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from helpers import ROOT, cli_env, in_order, read_jsonl, run_cli, short_record, write_jsonl
from serve_support import ServerProcess

pytestmark = pytest.mark.slow

KEY = "remote-key-7d2a"
ENGINE = ["--ctx", "2048", "--gpu-layers", "0"]
# The client's sampling options travel with each record: the server's own --max-tokens (64) must
# not apply to a client that says 16.
CLIENT = ["--max-tokens", "16", "--temperature", "0"]
TIMING = {"seconds", "first_token_seconds", "reused_prompt_tokens"}  # depend on load and cache state


@pytest.fixture(scope="module")
def server(smollm2):
    srv = ServerProcess("-m", str(smollm2), *ENGINE, "--parallel", "2", "--max-tokens", "64", "--api-key", KEY)
    try:
        srv.wait_ready()
        yield srv
    finally:
        assert srv.stop() == 0, srv.log


def remote(*args, url, key=KEY):
    return run_cli(*args, "--server", url, *(["--api-key", key] if key else []), *CLIENT)


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    got = in_order(got, [r["id"] for r in want])   # both files hold rows as their records finished
    for g, w in zip(got, want):
        assert set(g) == set(w), (g, w)
        for field in set(w) - TIMING - {"probabilities", "score_mass", "expected_score"}:
            assert g[field] == w[field], (field, g, w)
        # Same engine build and arithmetic; 1e-4 allows for a decode batch that held other
        # sequences (the server batches the client's records together, as local --parallel does).
        if w["probabilities"] is None:
            assert g["probabilities"] is None
        else:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-4)
            assert g["score_mass"] == pytest.approx(w["score_mass"], abs=1e-4)


def test_score_server_rows_equal_local_rows(server, smollm2, tmp_path):
    records = [short_record(i) for i in range(3)] + ['{"id": "broken"', {"id": "bad", "instruction": "x"}]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    local = run_cli("score", src, "-o", tmp_path / "local.jsonl", "-m", smollm2, *ENGINE, "--parallel", "2",
                    *CLIENT, "-q")
    assert local.returncode == 2, local.stderr        # error rows for the two bad lines
    result = remote("score", src, "-o", tmp_path / "remote.jsonl", url=server.url)
    assert result.returncode == 2, result.stderr
    assert f"server: {server.url}" in result.stderr and "parallel 2" in result.stderr
    ids = ["r0", "r1", "r2", "4", "bad"]   # rows are written as records finish: compare in input order
    written = read_jsonl(tmp_path / "remote.jsonl")
    got = in_order(written, ids)
    want = in_order(read_jsonl(tmp_path / "local.jsonl"), ids)
    assert_same_rows(got, want)
    # Bad lines never reached the server: the local file/line/field message.
    assert got[4]["error"] == f"{src}:5: field 'response': missing (expected orig_response or response)"
    assert all(r["completion_tokens"] <= 16 for r in got[:3])
    # Re-running resumes: nothing left to grade, nothing written twice.
    again = remote("score", src, "-o", tmp_path / "remote.jsonl", url=server.url)
    assert again.returncode == 2 and "wrote 0 rows" in again.stderr and "(5 already there)" in again.stderr
    assert read_jsonl(tmp_path / "remote.jsonl") == written


def test_grade_server_prints_what_local_grade_prints(server, smollm2):
    args = ["grade", "-i", "3 더하기 3은?", "-r", "6입니다.", "--rubric-preset", "helpfulness", "--json"]
    local = run_cli(*args, "-m", smollm2, *ENGINE, *CLIENT)
    result = remote(*args, url=server.url)
    assert local.returncode == result.returncode == 0, (local.stderr, result.stderr)
    local_text, local_row = local.stdout.rsplit("\n{", 1)
    text, row = result.stdout.rsplit("\n{", 1)
    assert text == local_text
    assert_same_rows([json.loads("{" + row)], [json.loads("{" + local_row)])
    score_line = [line for line in result.stderr.splitlines() if line.startswith("score ")]
    assert score_line == [line for line in local.stderr.splitlines() if line.startswith("score ")]


def test_wrong_or_missing_key_is_one_line_and_exit_11(server, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1)])
    for key, says in (("wrong", "refused the API key (401)"), (None, "requires an API key (401)")):
        result = remote("score", src, "-o", tmp_path / "out.jsonl", url=server.url, key=key)
        assert result.returncode == 11, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("prom-local: error:") and says in lines[0], lines
        assert not (tmp_path / "out.jsonl").exists() or not (tmp_path / "out.jsonl").read_text()


def test_server_killed_mid_run_then_resumed_on_a_new_server(smollm2, tmp_path):
    ids = [f"r{i}" for i in range(4)]
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(4)])
    out = tmp_path / "out.jsonl"
    first = ServerProcess("-m", str(smollm2), *ENGINE, "--parallel", "1")
    try:
        first.wait_ready()
        # One record in flight at a time, so the server dies with records still to grade.
        client = subprocess.Popen(
            [sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out), "--server", first.url,
             "--parallel", "1", *CLIENT], cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (out.exists() and out.read_text("utf-8").count("\n") >= 1):
            assert client.poll() is None, client.stderr.read()
            assert time.monotonic() < deadline, "no row written"
            time.sleep(0.05)  # poll interval while waiting for the first row
        first.proc.kill()    # the server dies, not cleanly
        first.proc.wait()
        stderr = client.communicate(timeout=120)[1]
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert client.returncode == 11, stderr
    assert f"lost the server at {first.url}" in stderr and "re-run the same command to resume" in stderr
    assert "Traceback" not in stderr
    kept = read_jsonl(out)
    assert 1 <= len(kept) < 4 and all(r["error"] is None for r in kept)

    second = ServerProcess("-m", str(smollm2), *ENGINE, "--parallel", "2")
    try:
        second.wait_ready()
        result = run_cli("score", src, "-o", out, "--server", second.url, *CLIENT)
    finally:
        assert second.stop() == 0, second.log
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert rows[:len(kept)] == kept                       # nothing rewritten
    assert sorted(r["id"] for r in rows) == ids           # no gaps, no duplicates
    assert all(r["score"] in (1, 2, 3, 4, 5) for r in rows)
