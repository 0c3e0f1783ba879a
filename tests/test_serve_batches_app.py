"""The Batch API in process, on the scripted engine (fake_engine.py): the unmodified `openai` SDK
through Starlette's TestClient, the SQLite store's exactly-once point, ownership, limits, resume of
an interrupted batch, and a disk-full pause. (A real server process on SmolLM2, kill -9 and a full
tmpfs: test_serve_batches.py.)"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import openai
import pytest
from starlette.testclient import TestClient

from fake_engine import FakeEngine
from helpers import short_record
from prom_local.backends.batch_client import lines_for_records, rows_from_results
from prom_local.judging.judge import Judge
from prom_local.serve import ServeConfig, Service, create_app
from prom_local.serve.batches import BatchConfig
from prom_local.serve.batches.store import Store
from prom_local.serve.bridge import Admission

KEYS = {"alice": "key-alice-1", "bob": "key-bob-2"}


class App:
    def __init__(self, smollm2: Path, data_dir: Path, **batch):
        config = ServeConfig(model_path=Path("unused.gguf"), model_name="judge", api_keys=KEYS,
                             batches=BatchConfig(data_dir=data_dir, **{"poll_s": 0.05, **batch}))
        self.service = Service(config)
        self.service.judge = Judge.with_engine(FakeEngine(smollm2))
        self.service.admission = Admission(1 + config.max_queue)
        self.http = TestClient(create_app(self.service, load=False))

    def __enter__(self) -> "App":
        self.http.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.http.__exit__(*exc)

    def sdk(self, who: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=KEYS[who], http_client=self.http,
                             max_retries=0)


def grade_line(i: int, **extra) -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/grade", "body": short_record(i, **extra)}


def jsonl(lines: list) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines).encode()


def wait_status(sdk: openai.OpenAI, batch_id: str, statuses=("completed", "failed", "cancelled"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.02)   # poll interval: the worker runs in the app's own loop
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def entries(sdk: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def test_a_grade_batch_with_bad_lines_runs_end_to_end_through_the_openai_sdk(smollm2, tmp_path):
    lines = [grade_line(1), "{not json", {"method": "POST", "url": "/v1/grade", "body": short_record(2)},
             grade_line(1), {**grade_line(3), "url": "/v1/chat/completions"},
             {**grade_line(4), "body": {"instruction": "no response or rubric"}}, grade_line(5)]
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        uploaded = sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h",
                                   metadata={"run": "t1"})
        assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "t1"}
        done = wait_status(sdk, batch.id)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (7, 2, 5)
        assert done.completed_at >= done.in_progress_at >= done.created_at
        out, err = entries(sdk, done.output_file_id), entries(sdk, done.error_file_id)
    assert [e["custom_id"] for e in out] == ["r1", "r5"]
    assert all(e["response"]["status_code"] == 200 and e["error"] is None for e in out)
    assert out[0]["response"]["body"]["id"] == "r1" and out[0]["response"]["body"]["score"] == 4
    codes = {(e["custom_id"], (e["error"] or {}).get("code"), (e["response"] or {}).get("status_code"))
             for e in err}
    assert codes == {(None, "invalid_json", None), (None, "missing_custom_id", None),
                     ("r1", "duplicate_custom_id", None), ("r3", "invalid_url", None), ("r4", None, 400)}
    rows = rows_from_results(jsonl(out), jsonl(err))   # input order, as `score` writes
    assert [r["id"] for r in rows] == ["r1", "?", "?", "r1", "r3", "r4", "r5"]
    assert rows[5]["finish_reason"] == "error" and rows[5]["error"]


def test_files_and_batches_belong_to_their_key_name(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        alice, bob = app.sdk("alice"), app.sdk("bob")
        uploaded = alice.files.create(file=("in.jsonl", jsonl([grade_line(1)])), purpose="batch")
        batch = alice.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h")
        for call in (lambda: bob.files.retrieve(uploaded.id), lambda: bob.files.content(uploaded.id),
                     lambda: bob.files.delete(uploaded.id), lambda: bob.batches.retrieve(batch.id),
                     lambda: bob.batches.cancel(batch.id),
                     lambda: bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade",
                                                completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert bob.files.list().data == [] and bob.batches.list().data == []
        assert [f.id for f in alice.files.list(purpose="batch").data] == [uploaded.id]
        assert wait_status(alice, batch.id).status == "completed"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url="http://testserver/v1", api_key="nope", http_client=app.http,
                          max_retries=0).batches.list()


def test_uploads_are_bounded_and_a_file_that_is_not_jsonl_fails_validation(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data", max_upload_bytes=4096, max_lines=3) as app:
        sdk = app.sdk()
        with pytest.raises(openai.APIStatusError) as info:
            sdk.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert info.value.status_code == 413
        with pytest.raises(openai.BadRequestError, match="at most 3"):
            sdk.files.create(file=("long.jsonl", jsonl([grade_line(i) for i in range(4)])), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="purpose"):
            sdk.files.create(file=("in.jsonl", jsonl([grade_line(1)])), purpose="fine-tune")
        junk = sdk.files.create(file=("junk.jsonl", b"hello\nworld\n"), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            sdk.batches.create(input_file_id=junk.id, endpoint="/v1/embeddings", completion_window="24h")
        batch = sdk.batches.create(input_file_id=junk.id, endpoint="/v1/grade", completion_window="24h")
        failed = wait_status(sdk, batch.id)
        assert failed.status == "failed" and "not JSONL" in failed.errors.data[0].message


def test_batches_list_newest_first_in_pages(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        uploaded = sdk.files.create(file=("in.jsonl", jsonl([grade_line(1)])), purpose="batch")
        ids = [sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h").id
               for _ in range(3)]
        page = sdk.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        assert [b.id for b in sdk.batches.list(limit=2, after=page.data[-1].id).data] == [ids[0]]
        assert [b.id for b in sdk.batches.list(limit=5)] == ids[::-1]   # the SDK's own paging
        for batch_id in ids:   # the scripted engine must not close under a line in flight
            wait_status(sdk, batch_id)


def test_a_line_is_stored_once_and_an_interrupted_batch_resumes_without_redoing_it(smollm2, tmp_path):
    data = tmp_path / "data"
    store = Store(data)
    text = jsonl([grade_line(i) for i in range(1, 6)])
    store.add_file("alice", "in.jsonl", "batch", text)
    file_id = store.list_files("alice")[0]["id"]
    batch = store.add_batch("alice", file_id, "/v1/grade", "24h", None)
    # As a server killed mid-batch leaves it: in progress, lines 1 and 2 stored.
    store.set_status(batch["id"], "in_progress", total=5)
    for line in (1, 2):
        entry = {"id": f"batch_req_{line:08d}_x", "custom_id": f"r{line}",
                 "response": {"status_code": 200, "body": {"id": f"r{line}"}}, "error": None}
        store.save_result(batch["id"], line, f"r{line}", True, entry)
    with pytest.raises(sqlite3.IntegrityError):   # the exactly-once point: a line has one result
        store.save_result(batch["id"], 1, "r1", True, {})
    store.close()
    with App(smollm2, data) as app:
        sdk = app.sdk()
        done = wait_status(sdk, batch["id"])
        out = entries(sdk, done.output_file_id)
        assert len(app.service.judge.engine.prompts) == 3   # only lines 3..5 were graded
    assert sorted(e["custom_id"] for e in out) == [f"r{i}" for i in range(1, 6)]
    assert done.request_counts.completed == 5


def test_too_little_disk_space_pauses_a_batch_until_space_is_back(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        uploaded = sdk.files.create(file=("in.jsonl", jsonl([grade_line(i) for i in range(1, 4)])), purpose="batch")
        api_store = app.http.app.state.batch_api.store
        api_store.limits.min_free_bytes = api_store.free_bytes() + (1 << 40)   # "the disk is full"
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h")
        deadline = time.monotonic() + 30
        while "paused" not in app.http.get(f"/v1/batches/{batch.id}", headers=_auth()).text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        shown = app.http.get(f"/v1/batches/{batch.id}", headers=_auth()).json()
        assert shown["status"] == "in_progress" and "disk full" in shown["prom_local"]["paused"]
        with pytest.raises(openai.APIStatusError) as info:   # uploads are refused meanwhile
            sdk.files.create(file=("in.jsonl", jsonl([grade_line(9)])), purpose="batch")
        assert info.value.status_code == 507
        api_store.limits.min_free_bytes = 0
        done = wait_status(sdk, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3


def test_expired_files_are_deleted_but_inputs_of_running_batches_are_kept(tmp_path):
    store = Store(tmp_path / "data")
    old = store.add_file("a", "old.jsonl", "batch", b"{}\n")
    kept = store.add_file("a", "in.jsonl", "batch", b"{}\n")
    batch = store.add_batch("a", kept["id"], "/v1/grade", "24h", None)
    assert store.expire(now=time.time() + 31 * 86400) == 1
    assert store.get_file("a", old["id"]) is None and not store.path(old["id"]).exists()
    assert store.get_file("a", kept["id"]) is not None
    store.set_status(batch["id"], "completed")
    assert store.expire(now=time.time() + 31 * 86400) == 1


def test_batch_submit_turns_records_into_grade_lines_with_their_ids(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(short_record(1)), "{broken", json.dumps({"instruction": "x"})]) + "\n")
    lines = list(lines_for_records(path))
    assert [line["custom_id"] for line in lines] == ["r1", "2", "3"]   # ids as `score` gives bad lines
    assert lines[0]["body"]["id"] == "r1" and lines[0]["url"] == "/v1/grade"


def _auth(who: str = "alice") -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}

