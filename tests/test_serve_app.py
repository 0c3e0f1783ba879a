"""The HTTP layer without a model: error shapes, keys, limits, readiness, stop strings, grading
detection. (Real inference through a real server process: test_serve.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from prom_local.judging.prompts import PROMETHEUS_KO_SYSTEM
from prom_local.serve import ServeConfig, Service, create_app
from prom_local.serve.chat import StopScanner, is_grading
from prom_local.serve.schema import parse_chat

KEY = "k-123"


@pytest.fixture
def client():
    service = Service(ServeConfig(model_path=Path("unused.gguf"), model_name="judge", api_keys={"default": KEY},
                                  max_body_bytes=4096))
    with TestClient(create_app(service, load=False)) as client:
        yield client


def post(client, body, key=KEY, raw=None, path="/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if raw is not None:
        return client.post(path, content=raw, headers={**headers, "Content-Type": "application/json"})
    return client.post(path, json=body, headers=headers)


def assert_openai_error(response, status, *, param=None, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


GOOD = {"model": "judge", "messages": [{"role": "user", "content": "hi"}]}


def test_health_is_503_until_the_model_is_loaded_and_requests_are_told_to_retry(client):
    response = client.get("/health")
    assert response.status_code == 503 and response.json() == {"status": "loading"}
    response = post(client, GOOD)
    assert_openai_error(response, 503, code="model_loading")
    assert response.headers["retry-after"]


@pytest.mark.parametrize("key", [None, "wrong", KEY + "x", ""])
def test_a_missing_or_wrong_key_is_401(client, key):
    assert_openai_error(post(client, GOOD, key=key), 401, code="invalid_api_key")
    assert_openai_error(client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}), 401)
    assert_openai_error(client.get("/metrics"), 401)


@pytest.mark.parametrize("body, param", [
    ({"model": "judge", "messages": []}, "messages"),
    ({"model": "judge"}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({**GOOD, "temperature": "hot"}, "temperature"),
    ({**GOOD, "temperature": 3}, "temperature"),
    ({**GOOD, "max_tokens": 0}, "max_tokens"),
    ({**GOOD, "max_tokens": "12"}, "max_tokens"),
    ({**GOOD, "n": 99}, "n"),
    ({**GOOD, "stream": "yes"}, "stream"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**GOOD, "top_logprobs": 3}, "top_logprobs"),
    ({"model": "judge", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "judge", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "judge", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
])
def test_bad_requests_are_400_naming_the_field(client, body, param):
    error = assert_openai_error(post(client, body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_non_objects_are_400(client):
    assert_openai_error(post(client, None, raw=b'{"model": "judge", "messages": ['), 400, code="invalid_json")
    assert_openai_error(post(client, None, raw=b"\xff\xfe"), 400)
    assert_openai_error(post(client, [GOOD]), 400)
    assert_openai_error(post(client, None, raw=b"[]", path="/v1/grade"), 503)  # valid JSON: then readiness


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(client):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_openai_error(post(client, big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(10):
            yield b" " * 1000

    response = client.post("/v1/chat/completions", content=chunks(),
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert_openai_error(response, 413)


def test_unknown_paths_and_methods_keep_the_error_shape(client):
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)


def test_metrics_count_requests_and_errors_in_prometheus_text(client):
    post(client, {"model": "judge"})
    text = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'prom_local_requests_total{endpoint="chat",status="400"} 1.0' in text
    assert "prom_local_model_loaded 0.0" in text
    assert "# TYPE prom_local_prefix_reuse_ratio gauge" in text


def test_stop_scanner_never_sends_text_past_a_stop_string():
    scanner = StopScanner(["END", "\n\n"])
    sent = "".join(scanner.feed(piece) for piece in ["Hello E", "N", "ough. E", "ND and more"])
    assert sent + scanner.flush() == "Hello ENough. "
    assert scanner.stopped
    plain = StopScanner([])
    assert "".join(plain.feed(p) for p in ["a", "b"]) == "ab" and not plain.stopped


def test_grading_prompts_are_recognised_by_the_cards_system_prompt_or_prometheus_eval_markers():
    def chat(*messages):
        return parse_chat(json.dumps({"model": "m", "messages": list(messages)}).encode())

    assert is_grading(chat({"role": "system", "content": PROMETHEUS_KO_SYSTEM},
                           {"role": "user", "content": "###The instruction to evaluate: ..."}))
    assert is_grading(chat({"role": "system", "content": "You are a fair judge assistant."},
                           {"role": "user", "content": "###Task Description:\n...\n###Feedback: "}))
    assert not is_grading(chat({"role": "user", "content": "###Task Description: only one marker"}))
    assert not is_grading(chat({"role": "user", "content": "What is 2+2?"}))


def test_the_queue_is_bounded_and_gives_back_what_ended():
    """Admission against an engine that ends each request when told: past the limit a request is
    refused with 503 + Retry-After; once requests end, their room comes back."""
    import asyncio
    import queue

    from prom_local.engine import DoneEvent, GenOutput, GenRequest
    from prom_local.serve.bridge import Admission
    from prom_local.serve.errors import ApiError

    class Handle:
        def __init__(self, req):
            self.req, self.q = req, queue.SimpleQueue()

        def events(self):
            yield self.q.get()

        def cancel(self):
            self.q.put(DoneEvent(GenOutput(self.req.tag, "", [], "cancelled", 3, 0, [])))

    class Engine:
        def submit(self, req):
            return Handle(req)

    class Judge:
        engine = Engine()

    service = Service(ServeConfig(model_path=Path("unused.gguf"), model_name="judge"))
    service.judge, service.admission = Judge(), Admission(3)

    async def scenario():
        first = service.submit([GenRequest([1, 2, 3]), GenRequest([1, 2, 3])])
        with pytest.raises(ApiError) as refused:
            service.submit([GenRequest([1]), GenRequest([1])])
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        assert service.metrics.admitted == 2
        first.cancel()
        events = [event async for _, event in first.events()]
        assert [e.output.finish_reason for e in events] == ["cancelled", "cancelled"]
        second = service.submit([GenRequest([1]), GenRequest([1]), GenRequest([1])])
        second.cancel()
        assert len([e async for e in second.events()]) == 3

    asyncio.run(scenario())
    assert service.admission.admitted == 0 and service.metrics.cancelled == 5
