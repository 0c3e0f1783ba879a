"""The Batch API on a real `prom-local serve` process on loopback, real inference on SmolLM2, driven
by the unmodified `openai` SDK and by `prom-local batch`: upload + create + poll + download for
/v1/grade and /v1/chat/completions, rows equal to `score`'s, another key's 404s, the upload limit,
kill -9 mid-batch and restart (every custom_id once, finished lines not graded again), cancel
mid-way, and a full disk (a small tmpfs) that pauses a batch without harming its index."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from helpers import in_order, run_cli, short_record, write_jsonl
from serve_support import ServerProcess

pytestmark = pytest.mark.slow

KEYS = {"alice": "key-alice-7d1", "bob": "key-bob-93c"}
NAME = "smol"
ENGINE = ["--parallel", "2", "--ctx", "2048", "--gpu-layers", "0", "--max-tokens", "16"]


def serve(smollm2: Path, data_dir: Path, tmp_path: Path, *extra: str) -> ServerProcess:
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{name}={key}\n" for name, key in KEYS.items()))
    srv = ServerProcess("-m", str(smollm2), *ENGINE, "--served-name", NAME, "--api-key-file", str(keys),
                        "--data-dir", str(data_dir), *extra)
    srv.wait_ready()
    return srv


def sdk(server: ServerProcess, who: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEYS[who], max_retries=0, timeout=120)


def grade_lines(n: int, start: int = 0) -> bytes:
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/grade",
                               "body": short_record(i)}, ensure_ascii=False) + "\n"
                   for i in range(start, start + n)).encode()


def submit(client: openai.OpenAI, data: bytes, endpoint: str = "/v1/grade"):
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")


def wait_for(client: openai.OpenAI, batch_id: str, until, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        time.sleep(0.1)   # poll interval of a client, not a wait for an event
    raise TimeoutError(f"{batch_id}: {batch}")


def finished(batch) -> bool:
    return batch.status in ("completed", "failed", "cancelled")


def entries(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def lines_run(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEYS['alice']}"}).text
    return float(re.search(r"^prom_local_batch_lines_run_total (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch-serve")
    srv = serve(smollm2, tmp / "data", tmp, "--batch-max-upload-mib", "1")
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log


def test_grade_and_chat_batches_through_the_openai_sdk_and_rows_equal_score(server, smollm2, tmp_path):
    alice = sdk(server)
    records = [short_record(i) for i in range(3)] + [{"id": "bad", "instruction": "x"}]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    # prom-local as the client: records in, `score`'s rows out.
    auth = ["--server", server.url, "--api-key", KEYS["alice"]]
    submitted = run_cli("batch", "submit", str(src), *auth)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    # The chat batch goes in meanwhile, through the SDK.
    chat = submit(alice, "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                             "body": {"model": NAME, "max_tokens": 8, "messages": [
                                                 {"role": "user", "content": f"Say {i}."}]}}) + "\n"
                                 for i in range(2)).encode(), endpoint="/v1/chat/completions")
    waited = run_cli("batch", "wait", batch_id, *auth, "--interval", "0.2")
    assert waited.returncode == 0 and waited.stdout.strip() == "completed", waited.stderr
    out = tmp_path / "batch.jsonl"
    assert run_cli("batch", "results", batch_id, *auth, "-o", str(out)).returncode == 0
    want_path = tmp_path / "score.jsonl"
    scored = run_cli("score", str(src), "-o", str(want_path), "-m", str(smollm2), *ENGINE, "-q")
    assert scored.returncode == 2, scored.stderr   # the bad record is an error row
    got = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    # `batch results` writes input order; `score` writes rows as they finish: compare by id.
    want = in_order([json.loads(x) for x in want_path.read_text("utf-8").splitlines()], ["r0", "r1", "r2", "bad"])
    assert [r["id"] for r in got] == ["r0", "r1", "r2", "bad"]
    for g, w in zip(got, want):
        for field in ("score", "feedback", "output", "forced", "finish_reason", "prompt_tokens", "completion_tokens"):
            assert g[field] == w[field], (field, g, w)
        assert (g["probabilities"] is None) == (w["probabilities"] is None)
        if w["probabilities"] is not None:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-4)
    assert got[3]["error"] and want[3]["error"]
    report = run_cli("report", str(out))
    assert report.returncode in (0, 2), report.stderr

    done = wait_for(alice, chat.id, finished)
    assert done.status == "completed" and done.request_counts.completed == 2
    answers = entries(alice, done.output_file_id)
    assert sorted(a["custom_id"] for a in answers) == ["c0", "c1"]
    assert all(a["response"]["body"]["object"] == "chat.completion" for a in answers)


def test_another_key_gets_404_and_uploads_over_the_limit_are_refused(server):
    alice, bob = sdk(server), sdk(server, "bob")
    batch = submit(alice, grade_lines(1))
    for call in (lambda: bob.batches.retrieve(batch.id), lambda: bob.batches.cancel(batch.id),
                 lambda: bob.files.retrieve(batch.input_file_id), lambda: bob.files.content(batch.input_file_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [b.id for b in bob.batches.list()]
    assert batch.input_file_id not in [f.id for f in bob.files.list()]
    with pytest.raises(openai.APIStatusError) as info:
        alice.files.create(file=("big.jsonl", b"x" * (1 << 20) + b"x"), purpose="batch")
    assert info.value.status_code == 413
    assert wait_for(alice, batch.id, finished).status == "completed"


def test_kill_9_mid_batch_then_restart_finishes_every_line_once_and_cancel_keeps_what_finished(smollm2, tmp_path):
    data = tmp_path / "data"
    lines = 6
    first = serve(smollm2, data, tmp_path)
    try:
        batch = submit(sdk(first), grade_lines(lines))
        wait_for(sdk(first), batch.id, lambda b: b.request_counts.completed >= 2)
    finally:
        first.proc.kill()   # kill -9: no shutdown of any kind
        first.proc.wait()
    with contextlib.closing(sqlite3.connect(data / "index.sqlite3")) as db:
        stored = db.execute("SELECT COUNT(*) FROM results WHERE batch_id=?", (batch.id,)).fetchone()[0]
        counted = db.execute("SELECT completed FROM batches WHERE id=?", (batch.id,)).fetchone()[0]
    assert 2 <= stored == counted < lines
    second = serve(smollm2, data, tmp_path)
    try:
        alice = sdk(second)
        done = wait_for(alice, batch.id, finished)
        assert done.status == "completed" and done.request_counts.completed == lines
        ids = [e["custom_id"] for e in entries(alice, done.output_file_id) + entries(alice, done.error_file_id)]
        assert sorted(ids) == sorted(f"r{i}" for i in range(lines))   # every custom_id exactly once
        assert lines_run(second) == lines - stored                     # the finished ones were not graded again

        cancelled = submit(alice, grade_lines(8, start=10))
        wait_for(alice, cancelled.id, lambda b: b.request_counts.completed >= 1)
        alice.batches.cancel(cancelled.id)
        ended = wait_for(alice, cancelled.id, finished)
        assert ended.status == "cancelled" and ended.cancelled_at
        kept = entries(alice, ended.output_file_id)
        assert 1 <= len(kept) == ended.request_counts.completed < 8
        assert len({e["custom_id"] for e in kept}) == len(kept)
    finally:
        assert second.stop() == 0, second.log


def test_a_full_disk_pauses_the_batch_and_it_resumes_when_space_is_freed(smollm2, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        srv = serve(smollm2, disk / "data", tmp_path, "--batch-min-free-mib", "4")
        try:
            alice = sdk(srv)
            batch = submit(alice, grade_lines(6))
            wait_for(alice, batch.id, lambda b: b.request_counts.completed >= 1)
            filler = disk / "filler"
            with open(filler, "wb") as handle:   # leave about 2 MiB: below the 4 MiB kept free
                stat = os.statvfs(disk)
                handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - (2 << 20)))
            paused = wait_for(alice, batch.id, lambda b: (b.model_extra.get("prom_local") or {}).get("paused"))
            assert paused.status == "in_progress" and "disk full" in paused.model_extra["prom_local"]["paused"]
            with pytest.raises(openai.APIStatusError) as info:
                alice.files.create(file=("in.jsonl", grade_lines(1)), purpose="batch")
            assert info.value.status_code == 507
            # The index is whole meanwhile (closed at once: an open file would keep the tmpfs busy).
            with contextlib.closing(sqlite3.connect(disk / "data" / "index.sqlite3")) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                stored = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
                assert stored == db.execute("SELECT completed + failed FROM batches").fetchone()[0]
            filler.unlink()
            done = wait_for(alice, batch.id, finished)
            assert done.status == "completed" and done.request_counts.completed == 6
            ids = sorted(e["custom_id"] for e in entries(alice, done.output_file_id))
            assert ids == sorted(f"r{i}" for i in range(6))
        finally:
            assert srv.stop() == 0, srv.log
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)   # detach it whatever still holds it
