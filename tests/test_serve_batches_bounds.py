"""The Batch API's per-key bounds and client-visible text, in process on the scripted engine (the
unmodified `openai` SDK through Starlette's TestClient): files and bytes kept per key (429 saying
which bound and how to free it), only purpose=batch files as input, /v1/files paginated as OpenAI's,
file names without control or bidi characters; and the bounded-JSON walker's memory. (The same
Batch API as a hostile key holder meets it on a real server: test_serve_batches_hostile.py.)"""

from __future__ import annotations

import json
import tracemalloc

import openai
import pytest

from prom_local.serve.errors import ApiError
from prom_local.serve.limits import MAX_ITEMS, check_tree, clean_filename
from test_serve_batches_app import KEYS, App, grade_line, jsonl, wait_status


def upload(sdk: openai.OpenAI, n: int = 1, name: str = "in.jsonl"):
    return sdk.files.create(file=(name, jsonl([grade_line(i) for i in range(n)])), purpose="batch")


def test_a_key_past_its_files_or_bytes_gets_429_naming_the_bound_and_the_other_key_does_not(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data", max_files=2) as app:
        alice = app.sdk()
        kept = [upload(alice), upload(alice)]
        with pytest.raises(openai.RateLimitError) as info:
            upload(alice)
        assert "--batch-key-max-files" in info.value.message and "DELETE /v1/files" in info.value.message
        assert upload(app.sdk("bob")).purpose == "batch"   # bob keeps his own count
        alice.files.delete(kept[0].id)
        assert upload(alice).purpose == "batch"            # freed: room again
    size = len(jsonl([grade_line(0)]))
    with App(smollm2, tmp_path / "data2", max_key_bytes=size + size // 2) as app:
        alice = app.sdk()
        upload(alice)
        with pytest.raises(openai.RateLimitError) as info:
            upload(alice)
        assert "--batch-key-max-mib" in info.value.message and info.value.body["code"] == "key_storage_full"


def test_only_purpose_batch_files_are_batch_inputs_and_a_running_batchs_input_stays(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        batch = sdk.batches.create(input_file_id=upload(sdk, 2).id, endpoint="/v1/grade", completion_window="24h")
        done = wait_status(sdk, batch.id)
        with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
            sdk.batches.create(input_file_id=done.output_file_id, endpoint="/v1/grade", completion_window="24h")


def test_files_are_listed_in_pages_like_openais(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        ids = [upload(sdk).id for _ in range(5)]
        page = app.http.get("/v1/files", params={"limit": 2}, headers=_auth()).json()
        assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = app.http.get("/v1/files", params={"limit": 10, "after": page["last_id"]}, headers=_auth()).json()
        assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and not rest["has_more"]
        oldest = app.http.get("/v1/files", params={"limit": 2, "order": "asc"}, headers=_auth()).json()
        assert [f["id"] for f in oldest["data"]] == ids[:2]
        assert [f.id for f in sdk.files.list(limit=2)] == ids[::-1]   # the SDK's own paging
        for params, param in (({"after": "file-nope"}, "after"), ({"order": "sideways"}, "order"),
                              ({"limit": "²"}, "limit")):
            response = app.http.get("/v1/files", params=params, headers=_auth())
            assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_file_names_lose_control_and_bidi_characters(smollm2, tmp_path):
    with App(smollm2, tmp_path / "data") as app:
        shown = upload(app.sdk(), name="evil\u202egnp.\x1b[31mjsonl\u2066").filename
    assert shown == "evilgnp.[31mjsonl"
    # httpx writes a NUL as %00 itself; another client may send it raw.
    assert clean_filename("a\x00b\u200fc.jsonl") == "abc.jsonl"
    assert clean_filename("../../etc/passwd") == "passwd" and clean_filename("\u202e\n") == "input.jsonl"


def test_the_json_walker_holds_memory_by_depth_not_by_list_length():
    data = json.loads("[" + ",".join(["0"] * MAX_ITEMS) + "]")
    tracemalloc.start()
    check_tree({"messages": data})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 10, peak   # the old walker pushed one (item, path) pair per entry: tens of MB
    with pytest.raises(ApiError) as info:
        check_tree({"messages": [0] * (MAX_ITEMS + 1)})
    assert info.value.param == "messages" and info.value.code == "too_many_items"
    with pytest.raises(ApiError) as info:
        check_tree({"a": [{"b": [1, 2, 2 ** 70]}]})
    assert info.value.param == "a[0].b[2]"


def _auth(who: str = "alice") -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}
