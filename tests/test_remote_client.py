"""RemoteJudge against a real uvicorn server on loopback whose Judge runs the scripted engine
(tests/fake_engine.py): the client's protocol (rows, order, sampling sent, busy retries, refused
records, bad keys) without inference. Real inference through real processes: test_remote.py."""

from __future__ import annotations

import dataclasses
import socket
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn

from fake_engine import FakeEngine, Reply
from helpers import read_jsonl, short_record, write_jsonl
from prom_local.runs.score_file import score_file
from prom_local.engine import SamplingParams
from prom_local.judging.judge import Judge
from prom_local.judging.records import record_from_mapping
from prom_local.backends.remote import RemoteError, RemoteJudge, check_url
from prom_local.serve import ServeConfig, Service, create_app
from prom_local.serve.bridge import Admission

KEY = "k-remote"
REPLY = Reply("The answer is right. [RESULT] 4")


class LiveServer:
    """create_app on uvicorn in a thread, with a scripted-engine Judge put in place of a loaded model."""

    def __init__(self, gguf: Path, *, max_body_bytes: int = 1 << 20, max_queue: int = 8,
                 profile: str = "prometheus-ko"):
        self.service = Service(ServeConfig(model_path=gguf, model_name="smol", api_keys={"default": KEY},
                                           max_body_bytes=max_body_bytes, max_queue=max_queue))
        engine = FakeEngine(gguf, REPLY, n_ctx=2048)
        engine.n_parallel = 3
        self.service.judge = Judge.with_engine(engine, profile=profile)
        self.service.admission = Admission(engine.n_parallel + max_queue)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service, load=False), log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self._sock = sock

    def wait_started(self) -> None:
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died")
            self.thread.join(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self._sock.close()


@pytest.fixture
def live(smollm2):
    server = LiveServer(smollm2)
    server.wait_started()
    yield server
    server.stop()


def in_order_of(rows: list[dict], reference: list[dict]) -> list[dict]:
    """`rows` (a results file, written in the order records finished) in `reference`'s id order;
    every id exactly once."""
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows) == len(reference)
    return [by_id[r["id"]] for r in reference]


def test_check_url():
    assert check_url("http://box:8000/v1/") == "http://box:8000"
    assert check_url(" https://judge.example/prefix ") == "https://judge.example/prefix"
    for bad in ("box:8000", "ftp://box", "http://", "http://box:99999", "http://box/?x=1"):
        with pytest.raises(Exception) as info:
            check_url(bad)
        assert info.value.exit_code == 2 and "--server" in str(info.value)


def test_rows_equal_a_local_judge_on_the_same_engine(live, smollm2, tmp_path):
    # With a prompt too long for the context: the same error row as locally, from the server's engine.
    records = [short_record(i) for i in range(7)] + ['{"id": "broken"', {"id": "bad", "instruction": "x"},
                                                     short_record(9, response="아주 긴 답 " * 800)]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    with Judge.with_engine(FakeEngine(smollm2, REPLY, n_ctx=2048)) as local:
        score_file(local, src, tmp_path / "local.jsonl")
    with RemoteJudge(live.url, api_key=KEY, source=str(src)) as judge:
        assert (judge.model_name, judge.concurrency) == ("smol", 3)  # the server's slots, from /v1/models
        stats = score_file(judge, src, tmp_path / "remote.jsonl")
    assert stats.graded == 10 and stats.errors == 3
    # A results file takes rows as records finish (the remote judge has 3 in flight): compare by id,
    # in input order.
    want = read_jsonl(tmp_path / "local.jsonl")
    got = in_order_of(read_jsonl(tmp_path / "remote.jsonl"), want)
    assert len(got) == 10
    drop = {"seconds", "first_token_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
           [{k: v for k, v in r.items() if k not in drop} for r in want]
    # The whole line's object was sent, under the row's id (line 8 has no usable id: its line number).
    assert got[7]["id"] == "8" and got[7]["error"].startswith(f"{src}:8: invalid JSON")
    assert "prompt is" in got[9]["error"] and got[9]["prompt_tokens"] > 2048


def test_pairs_in_both_orders_and_benchmark_gold_lists_come_back_as_local_rows(smollm2, tmp_path):
    """What other helpers added to the library reaches a --server run: relative records graded in
    both orders (the request says so), and a benchmark file's gold lists (never sent: kept locally)."""
    pair = {"id": "p1", "instruction": "Capital of Australia?", "response_A": "Sydney.",
            "response_B": "Canberra.", "rubric": "Is it correct?", "gold_winner": "B"}
    src = write_jsonl(tmp_path / "in.jsonl", [pair, short_record(1), dict(pair, id="p2", response_A="Perth.")])
    server = LiveServer(smollm2, profile="prometheus-2")
    server.wait_started()
    try:
        with Judge.with_engine(FakeEngine(smollm2, REPLY, n_ctx=2048), profile="prometheus-2") as local:
            score_file(local, src, tmp_path / "local.jsonl", both_orders=True)
        with RemoteJudge(server.url, api_key=KEY, source=str(src)) as judge:
            score_file(judge, src, tmp_path / "remote.jsonl", both_orders=True)
            # A benchmark file's record is built in code (no JSON line to send): its gold list
            # stays here and joins the server's row.
            built = dataclasses.replace(record_from_mapping(short_record(2), line=1), raw=None,
                                        gold_score=5, gold_scores=(4, 5, 5))
            row = judge.grade(built).to_row()
    finally:
        server.stop()
    want = read_jsonl(tmp_path / "local.jsonl")
    got = in_order_of(read_jsonl(tmp_path / "remote.jsonl"), want)   # rows come back as they finish
    drop = {"seconds", "first_token_seconds", "reused_prompt_tokens"}
    assert [r.get("mode") for r in got] == ["relative", None, "relative"]
    assert [len(r["orders"]) for r in got if r.get("mode")] == [2, 2]
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
           [{k: v for k, v in r.items() if k not in drop} for r in want]
    assert (row["gold_score"], row["gold_scores"], row["gold_mean"]) == (5, [4, 5, 5], 4.6667)


def test_the_clients_sampling_options_are_the_ones_used(live):
    record = record_from_mapping(short_record(1), line=1)
    with RemoteJudge(live.url, api_key=KEY, sampling=SamplingParams(max_tokens=3)) as judge:
        grade = judge.grade(record)
    assert grade.completion_tokens == 3 and grade.forced and grade.score == 4


def test_busy_server_is_waited_for_then_graded(live):
    admission = live.service.admission
    assert admission.try_take(admission.limit)   # every slot taken: the next POST is a 503 queue_full
    record = record_from_mapping(short_record(2), line=1)

    def free_after_first_refusal() -> None:
        while live.service.metrics.errors["queue_full"] == 0:
            threading.Event().wait(0.01)   # poll interval while waiting for the refusal
        admission.give_back(admission.limit)

    helper = threading.Thread(target=free_after_first_refusal, daemon=True)
    helper.start()
    with RemoteJudge(live.url, api_key=KEY) as judge:
        grade = judge.grade(record)
    helper.join(10)
    assert grade.error is None and grade.score == 4


def test_busy_past_the_wait_ends_the_run_with_exit_11(live):
    admission = live.service.admission
    assert admission.try_take(admission.limit)
    record = record_from_mapping(short_record(2), line=1)
    with RemoteJudge(live.url, api_key=KEY, busy_wait=0.5) as judge:   # less than one Retry-After
        with pytest.raises(RemoteError) as info:
            judge.grade(record)
    assert info.value.exit_code == 11 and "stayed busy (503" in str(info.value)


def test_a_record_the_server_refuses_is_an_error_row_naming_its_line(smollm2, tmp_path):
    server = LiveServer(smollm2, max_body_bytes=2048)
    server.wait_started()
    try:
        src = write_jsonl(tmp_path / "in.jsonl", [short_record(1), short_record(2, response="긴 " * 2000),
                                                  short_record(3)])
        with RemoteJudge(server.url, api_key=KEY, source=str(src)) as judge:
            stats = score_file(judge, src, tmp_path / "out.jsonl")
    finally:
        server.stop()
    rows = sorted(read_jsonl(tmp_path / "out.jsonl"), key=lambda r: r["id"])   # written as they finish
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"] and stats.errors == 1
    assert rows[1]["error"].startswith(f"{src}:2: the server refused this record (413): The request body is larger")
    assert rows[0]["score"] == rows[2]["score"] == 4


def test_a_wrong_key_fails_before_any_work(live):
    for key, says in (("nope", "refused the API key (401)"), (None, "requires an API key (401)")):
        with pytest.raises(RemoteError) as info:
            RemoteJudge(live.url, api_key=key)
        assert says in str(info.value)


def test_grade_envelope_is_validated(live):
    headers = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(live.url + "/v1/grade", headers=headers,
                     json={"records": short_record(1), "sampling": {"max_tokens": "many"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sampling.max_tokens"
    bad = httpx.post(live.url + "/v1/grade", headers=headers, json={"records": short_record(1), "samplin": {}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "samplin"
    rows = httpx.post(live.url + "/v1/grade", headers=headers,
                      json={"records": [short_record(1)], "sampling": {"max_tokens": 2}}).json()
    assert len(rows) == 1 and rows[0]["completion_tokens"] == 2


def test_the_tui_grades_through_the_server(live):
    """`prom-local tui --server URL`: the app's loader connects instead of loading a model; the
    grade screen's record goes to the server and its row comes back to the screen."""
    import asyncio

    from prom_local.cli.options import EngineOptions
    from prom_local.cli.tui_cmd import make_remote_loader
    from prom_local.tui import PromLocalApp
    from tui_support import settled_text, wait_for, wait_model

    async def run():
        app = PromLocalApp(make_remote_loader(live.url, KEY, None, EngineOptions()), model=None)
        async with app.run_test(size=(100, 32)) as pilot:
            await wait_model(pilot, app)
            assert app.model_info.name == "smol" and live.url in app.model_info.offload
            await pilot.click("#instruction")
            await pilot.press(*"What is 2+2?", "tab", "4")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None and app.screen.last_grade is not None, 30, "the grade")
            grade = app.screen.last_grade
            assert (grade.score, grade.error) == (4, None)
            assert "What is 2+2?" in live.service.judge.engine.prompts[-1]
            text = await settled_text(pilot, app)
            assert "smol" in text and "The answer is right." in text
            app.load_model("prometheus-ko")            # F4's choice: the server decides the model
            await wait_for(pilot, lambda: app.job is None, 10, "the refusal")
            assert app.judge is not None and "serves one model" in (app.model_error or "")

    asyncio.run(run())
