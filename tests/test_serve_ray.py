"""`serve --ray`: one HTTP service over a local Ray cluster's two CPU engines (SmolLM2, one thread
each). A batch through the unmodified `openai` SDK is graded by both engines; one engine's process
is killed with SIGKILL mid-batch, and the batch still completes with every custom_id exactly once,
rows equal to a local `score`'s; an interactive /v1/grade sent meanwhile gets its row; Ray replaces
the engine and /health shows it back. The choosing rules (prefix affinity, free slots, none
ready) are tested without Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from helpers import in_order, run_cli, short_record, write_jsonl
from serve_support import ServerProcess

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the ray extra is not installed")
KEY = "key-ray-5c2"
NAME = "smol"
ENGINE = ["--parallel", "1", "--threads", "1", "--ctx", "2048", "--gpu-layers", "0", "--max-tokens", "16"]
N_LINES = 8


def poll(what, until, timeout: float = 300):
    """what() until until(result): a client's poll, not a wait for an event of ours."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = what()
        if until(result):
            return result
        time.sleep(0.1)
    raise TimeoutError(str(result))


def models(server: ServerProcess) -> dict:
    reply = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    return reply.json()["data"][0]["prom_local"]


def engine_series(server: ServerProcess, name: str) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    prefix = f"prom_local_engine_{name}"
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix + "{") or line.startswith(prefix + "_total{")}


@needs_ray
@pytest.mark.slow
def test_a_batch_survives_an_engine_killed_mid_way_and_rows_equal_score(smollm2, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"tester={KEY}\n")
    server = ServerProcess("--ray", "local", "--actors", "2", "-m", str(smollm2), *ENGINE, "--served-name", NAME,
                           "--api-key-file", str(keys), "--data-dir", str(tmp_path / "data"), "--batch-slots", "2")
    try:
        health = server.wait_ready()
        assert health["engines"]["count"] == 2 and health["engines"]["ready"] == 2, health
        assert "engines 0@" in server.log and ", 1@" in server.log   # the start-up line names them
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        records = [short_record(i) for i in range(N_LINES)]
        data = "".join(json.dumps({"custom_id": r["id"], "method": "POST", "url": "/v1/grade", "body": r},
                                  ensure_ascii=False) + "\n" for r in records).encode()
        uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h")

        # Mid-batch: a line done, and an engine holding one now. Kill that engine's process.
        poll(lambda: client.batches.retrieve(batch.id), lambda b: b.request_counts.completed >= 1)
        busy = poll(lambda: models(server)["engines"]["list"], lambda rows: any(r["inflight"] for r in rows))
        victim = next(r for r in busy if r["inflight"])
        os.kill(victim["pid"], signal.SIGKILL)
        # An interactive request meanwhile gets its row.
        reply = httpx.post(server.url + "/v1/grade", json=short_record(99),
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
        assert reply.status_code == 200, reply.text
        assert reply.json()["id"] == "r99" and reply.json()["score"] in (1, 2, 3, 4, 5, None)

        done = poll(lambda: client.batches.retrieve(batch.id),
                    lambda b: b.status in ("completed", "failed", "cancelled"))
        assert done.status == "completed" and done.request_counts.completed == N_LINES, done
        answers = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        assert sorted(a["custom_id"] for a in answers) == sorted(r["id"] for r in records)   # each once
        assert all(a["response"]["status_code"] == 200 for a in answers)
        requests = engine_series(server, "requests")
        assert requests["0"] > 0 and requests["1"] > 0, requests   # both engines graded
        # The line the killed engine held was sent to the other one (the next batch line follows a
        # finished one at once, so a busy engine is never without one for long).
        assert engine_series(server, "retried")[str(victim["engine"])] >= 1, server.log

        # Chat, whole and streamed, and a refusal: the engine's own answers, through the front.
        asked = [{"role": "user", "content": "Say hi."}]
        whole = client.chat.completions.create(model=NAME, messages=asked, max_tokens=8)
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=NAME, messages=asked, max_tokens=8, stream=True) if c.choices]
        assert whole.choices[0].message.content and "".join(pieces) == whole.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="instruction"):
            client.post("/grade", body={"id": "x", "response": "y"}, cast_to=object)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other", messages=asked, max_tokens=8)

        # prom-local as the client (`score --server`): its rows equal the batch's.
        by_server = tmp_path / "server.jsonl"
        two = write_jsonl(tmp_path / "two.jsonl", records[:2])
        scored = run_cli("score", str(two), "-o", str(by_server), "--server", server.url, "--api-key", KEY, "--max-tokens", "16", "-q")
        assert scored.returncode == 0, scored.stderr
        assert models(server)["n_layer"] > 0 and models(server)["size_bytes"] == smollm2.stat().st_size

        # Ray replaced the engine: ready again, under a new process.
        back = poll(lambda: models(server)["engines"]["list"][victim["engine"]],
                    lambda row: row["ready"] and row["restarts"] >= 1)
        assert back["pid"] != victim["pid"]
    finally:
        assert server.stop() == 0, server.log

    # The same rows as a local `score` (probabilities within 1e-4: another process, same build).
    src = write_jsonl(tmp_path / "in.jsonl", records)
    scored = run_cli("score", str(src), "-o", str(tmp_path / "score.jsonl"), "-m", str(smollm2), *ENGINE, "-q")
    assert scored.returncode == 0, scored.stderr
    want = in_order([json.loads(x) for x in (tmp_path / "score.jsonl").read_text("utf-8").splitlines()],
                    [r["id"] for r in records])
    got = in_order([a["response"]["body"] for a in answers], [r["id"] for r in records])
    served = [json.loads(x) for x in by_server.read_text("utf-8").splitlines()]
    assert [(r["id"], r["output"]) for r in in_order(served, ["r0", "r1"])] == [(r["id"], r["output"]) for r in got[:2]]
    for g, w in zip(got, want):
        for field in ("score", "feedback", "output", "finish_reason", "prompt_tokens", "completion_tokens"):
            assert g[field] == w[field], (field, g, w)
        if w["probabilities"] is not None:
            assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-4)


# -- choosing an engine, without Ray --------------------------------------------------------------

def _pool(*parallel: int):
    from prom_local.backends.ray.cluster import ActorSlot
    from prom_local.serve.cluster.pool import EnginePool, EngineState
    from prom_local.serve.service import ServeConfig

    pool = EnginePool("m.gguf", None, ServeConfig(model_path=Path("m.gguf"), model_name="m"), say=lambda m: None)
    pool.engines = [EngineState(i, ActorSlot(i, f"node{i}", f"node{i}", 1, 0, 1), parallel=p, ready=True)
                    for i, p in enumerate(parallel)]
    return pool


def test_a_request_goes_where_its_instruction_went_while_that_engine_has_a_free_slot():
    pool = _pool(2, 2)
    first = pool.choose(key=7, weight=1, exclude=set())
    again = pool.choose(key=7, weight=1, exclude=set())
    assert again.index == first.index                  # its prefix is cached there, a slot is free
    third = pool.choose(key=7, weight=1, exclude=set())
    assert third.index != first.index                  # that engine is full: the least busy one
    other = pool.choose(key=8, weight=1, exclude=set())
    assert other.index == third.index and other.inflight == 2
    pool.done(first, 2)
    assert pool.choose(key=None, weight=1, exclude=set()).index == first.index


def test_no_ready_engine_is_engine_lost_and_a_lost_engine_is_skipped():
    from prom_local.serve.cluster.pool import EngineLost

    pool = _pool(1, 1)
    pool.lost(pool.engines[0], RuntimeError("the actor died"))
    assert not pool.engines[0].ready and pool.engines[0].lost == "the actor died"
    assert pool.choose(key=None, weight=1, exclude=set()).index == 1
    with pytest.raises(EngineLost):
        pool.choose(key=None, weight=1, exclude={1})
    assert pool.describe()["ready"] == 1


def test_the_front_counts_a_bodys_sequences_before_parsing_it():
    from prom_local.serve.cluster.front import _chat_weight, _grade_key, _grade_weight

    record = short_record(1)
    assert _grade_weight(record, None) == 1
    assert _grade_weight([record] * 3, 2) == 6
    assert _grade_weight({"records": [record] * 2, "sampling": {"n": 3}, "both_orders": True}, None) == 12
    assert _grade_weight({"records": "nonsense", "sampling": {"n": True}}, None) == 1   # the engine says 400
    assert _grade_key([record, short_record(2)]) == _grade_key(record) != _grade_key(short_record(2))
    assert _grade_key("not a record") is None
    assert _chat_weight({"n": 4}) == 4 and _chat_weight({"n": "x"}) == 1 and _chat_weight([]) == 1


def test_with_no_engine_left_health_says_so_requests_get_retry_after_and_batches_wait(tmp_path):
    """The front alone (engines set by hand, no Ray): the states /health, /v1/grade and the batch
    runner show when every engine is lost, and when one is back."""
    from starlette.testclient import TestClient

    from prom_local.serve import create_app
    from prom_local.serve.batches import BatchConfig
    from prom_local.serve.cluster.front import ClusterService

    pool = _pool(1, 1)
    pool.start = lambda: None   # the engines above stand in for started ones
    pool.model = {"path": "/models/m.gguf", "sha256": "ab" * 32}
    pool.config.batches = BatchConfig(data_dir=tmp_path)
    service = ClusterService(pool.config, pool)
    with TestClient(create_app(service)) as http:
        ok = poll(lambda: http.get("/health"), lambda r: r.status_code == 200)
        assert ok.json()["engines"] == {"count": 2, "ready": 2, "list": [
            {"engine": i, "ready": True, "parallel": 1, "busy": 0, "restarts": 0} for i in (0, 1)]}
        for engine in pool.engines:
            pool.lost(engine, RuntimeError("the actor died"))
        down = http.get("/health")
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["status"] == "unavailable" and down.json()["engines"]["ready"] == 0
        refused = http.post("/v1/grade", json=short_record(1))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "engines_unavailable"
        assert not http.app.state.batch_api.runner._may_start(0)   # batch lines wait
        assert service.admission.admitted == 0                       # the refusal gave its room back
        pool.engines[1].ready, pool.engines[1].lost = True, None
        assert http.get("/health").status_code == 200
        assert http.app.state.batch_api.runner._may_start(0)


def test_engines_that_loaded_different_files_are_refused_naming_each_node():
    from prom_local.errors import ModelMismatch
    from prom_local.serve.cluster.pool import same_file

    pool = _pool(1, 1)
    for engine, digest in zip(pool.engines, ("a" * 64, "a" * 64)):
        engine.info = {"file": {"path": f"/m/{engine.index}.gguf", "sha256": digest}}
    assert same_file(pool.engines, "judge:Q4_K_M")["path"] == "/m/0.gguf"
    pool.engines[1].info["file"]["sha256"] = "b" * 64
    with pytest.raises(ModelMismatch, match=r"node0: /m/0.gguf sha256 a{16}…; node1: /m/1.gguf sha256 b{16}…"):
        same_file(pool.engines, "judge:Q4_K_M")


def test_a_stream_whose_client_leaves_before_its_first_event_frees_the_engine_and_cancels_there():
    import asyncio
    from types import SimpleNamespace

    pool = _pool(2)
    cancelled: list[str] = []
    opened: list[str] = []

    async def never_answers():
        await asyncio.Event().wait()
        yield None

    pool.engines[0].handle = SimpleNamespace(
        chat_stream=SimpleNamespace(remote=lambda rid, *args: opened.append(rid) or never_answers()),
        cancel=SimpleNamespace(remote=cancelled.append))

    async def leave_early():
        task = asyncio.ensure_future(pool.stream(None, 2, ("caller", {})))
        while not opened:   # the engine has the request
            await asyncio.sleep(0)
        assert pool.engines[0].inflight == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_early())
    assert pool.engines[0].inflight == 0 and cancelled == opened
