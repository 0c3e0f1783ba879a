"""The Batch API against its own key holders, on a real `prom-local serve` (SmolLM2, loopback) with two
named keys: a 40 MiB line, three concurrent 200 MiB uploads, a stalled upload, a client hanging up
mid-upload, a 50,000-line batch of error lines beside a large upload, 400 half-sent connections,
query numbers that only look like numbers, a queued batch's input gone from disk, fair turns between
keys, and the per-key bound on active batches. Throughout, GET /health answers within a second, the
server's memory stays within its bound, and nothing is a 500 or a traceback.

Big files are generated while they are sent (never built in memory here), and lines that need no
model work are error lines, so the module stays lean in CPU and time."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import short_record
from serve_support import ServerProcess

pytestmark = pytest.mark.slow

KEYS = {"alice": "key-alice-4f1", "bob": "key-bob-8c2"}
NAME = "smol"
READ_TIMEOUT = 3
MAX_ACTIVE = 5
BOUNDARY = "prom-local-test-boundary"


def auth(who: str = "alice") -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch-hostile")
    keys = tmp / "keys.txt"
    keys.write_text("".join(f"{name}={key}\n" for name, key in KEYS.items()))
    srv = ServerProcess("-m", str(smollm2), "--parallel", "2", "--ctx", "1024", "--gpu-layers", "0", "--threads", "1",
                        "--max-tokens", "4", "--served-name", NAME, "--api-key-file", str(keys),
                        "--data-dir", str(tmp / "data"), "--request-read-timeout", str(READ_TIMEOUT),
                        "--batch-key-max-active", str(MAX_ACTIVE))
    try:
        srv.wait_ready()
        srv.data = tmp / "data"
        yield srv
    finally:
        assert srv.stop() == 0, srv.log


# -- tools ------------------------------------------------------------------------------------------------

def form(lines, filename: str = "in.jsonl"):
    """A multipart body (purpose=batch, the file from `lines`, an iterable of bytes) as a generator."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
           f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
           "Content-Type: application/jsonl\r\n\r\n").encode()
    yield from lines
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(server, lines, who: str = "alice", timeout: float = 300) -> httpx.Response:
    headers = {**auth(who), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return httpx.post(server.url + "/v1/files", content=form(lines), headers=headers, timeout=timeout)


def create(server, file_id: str, endpoint: str = "/v1/chat/completions", who: str = "alice") -> httpx.Response:
    return httpx.post(server.url + "/v1/batches", headers=auth(who), timeout=30,
                      json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"})


def batch(server, batch_id: str, who: str = "alice") -> dict:
    return httpx.get(f"{server.url}/v1/batches/{batch_id}", headers=auth(who), timeout=30).json()


def wait_batch(server, batch_id: str, until, who: str = "alice", timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = batch(server, batch_id, who)
        if until(shown):
            return shown
        time.sleep(0.05)   # a client's poll interval, not a wait for an event
    raise TimeoutError(shown)


def ended(shown: dict) -> bool:
    return shown["status"] in ("completed", "failed", "cancelled")


def chat_line(i: int, tag: str = "c") -> bytes:
    return (json.dumps({"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": NAME, "max_tokens": 2, "messages": [{"role": "user", "content": f"Say {i}."}]}})
            + "\n").encode()


def error_line(i: int, pad: int = 0) -> bytes:
    """A line that is its own error at once (another url than the batch's): no model work."""
    return (json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"x": "y" * pad}})
            + "\n").encode()


def lines_of(file_id: str | None, server, who: str = "alice") -> list[dict]:
    if file_id is None:
        return []
    text = httpx.get(f"{server.url}/v1/files/{file_id}/content", headers=auth(who), timeout=60).text
    return [json.loads(x) for x in text.splitlines()]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024


@contextlib.contextmanager
def watched(server):
    """While the block runs: GET /health probed back to back (worst latency kept) and the server's
    peak RSS (VmHWM, reset first through clear_refs; sampled as well where that is not allowed)."""
    pid = server.proc.pid
    seen = {"health_s": 0.0, "probes": 0, "base_mib": rss_mib(pid), "peak_mib": 0.0}
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get(server.url + "/health").status_code == 200
                seen["health_s"] = max(seen["health_s"], time.monotonic() - started)
                seen["probes"] += 1
                seen["peak_mib"] = max(seen["peak_mib"], rss_mib(pid))
                stop.wait(0.02)   # probe interval

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()
        seen["peak_mib"] = max(seen["peak_mib"], rss_mib(pid, "VmHWM"))
        seen["growth_mib"] = seen["peak_mib"] - seen["base_mib"]
        print(f"\n/health worst {seen['health_s'] * 1000:.0f} ms over {seen['probes']} probes; RSS "
              f"{seen['base_mib']:.0f} -> peak {seen['peak_mib']:.0f} MiB")


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(READ_TIMEOUT * 10)
    return sock


def upload_head(who: str = "alice", length: int = 1 << 20) -> bytes:
    return (f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEYS[who]}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n").encode()


# -- lines and uploads ------------------------------------------------------------------------------------

def test_a_40_mib_line_is_that_lines_error_without_costing_the_server(server):
    def lines():
        yield b'{"custom_id":"n","method":"POST","url":"/v1/chat/completions","body":{"messages":['
        piece = b"0," * (1 << 19)
        for _ in range(40):   # 40 MiB of list
            yield piece
        yield b"0]}}\n"
        yield error_line(1)

    with watched(server) as seen:
        uploaded = upload(server, lines())
        assert uploaded.status_code == 200, uploaded.text
        created = create(server, uploaded.json()["id"])
        done = wait_batch(server, created.json()["id"], ended)
    assert seen["health_s"] < 1.0 and seen["growth_mib"] < 500, seen
    assert done["status"] == "completed" and done["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    errors = lines_of(done["error_file_id"], server)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [(None, "line_too_large"), ("e1", "invalid_url")]
    assert "--max-body-bytes" in errors[0]["error"]["message"]


def test_three_concurrent_200_mib_uploads_stream_to_disk(server):
    line = error_line(0, pad=5100)[:-1]   # ~5 KiB: 40,000 lines make 198 MiB

    def lines(n=40_000, per=64):
        block = b"".join(line.replace(b'"e0"', f'"e{i:05d}"'.encode()) + b"\n" for i in range(per))
        for _ in range(n // per):
            yield block

    sizes = []
    with watched(server) as seen:
        threads = [threading.Thread(target=lambda: sizes.append(upload(server, lines(), who="bob")))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [r.status_code for r in sizes] == [200] * 3, [r.text[:300] for r in sizes]
    assert all(197 << 20 < r.json()["bytes"] <= 200 << 20 for r in sizes)
    assert seen["health_s"] < 1.0 and seen["growth_mib"] < 300, seen
    for response in sizes:   # free the disk for the rest
        assert httpx.delete(f"{server.url}/v1/files/{response.json()['id']}", headers=auth("bob")).status_code == 200


def test_a_stalled_upload_is_cut_within_the_read_timeout(server):
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(upload_head() + b"--" + BOUNDARY.encode()[:18])   # headers, a valid key, 20 body bytes
    answer = sock.recv(300)
    waited = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert READ_TIMEOUT * 0.8 < waited < READ_TIMEOUT * 2, waited


def test_a_key_gets_a_few_uploads_at_once_and_429_past_them(server):
    held = [connect(server) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(upload_head("bob") + b"--")
        deadline = time.monotonic() + READ_TIMEOUT
        while True:   # the three are being received (the server answers nothing until their deadline)
            refused = upload(server, [chat_line(0)], who="bob")
            if refused.status_code == 429 or time.monotonic() > deadline:
                break
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_uploads", refused.text
        assert upload(server, [chat_line(0)], who="alice").status_code == 200   # another key is not held back
    finally:
        for sock in held:
            sock.close()


def test_a_client_hanging_up_mid_upload_is_a_499_log_line(server):
    sock = connect(server)
    sock.sendall(upload_head() + form([b"x" * 1000]).__next__())
    time.sleep(0.3)   # let the server start reading the body; then hang up
    sock.close()
    deadline = time.monotonic() + 10
    while "499" not in server.log:
        assert time.monotonic() < deadline, server.log[-2000:]
        time.sleep(0.05)   # waiting for the server's log line
    assert "ClientDisconnect" not in server.log


def test_a_50000_line_batch_and_a_large_upload_leave_health_answering(server):
    def errors():
        for start in range(0, 50_000, 500):
            yield b"".join(error_line(i) for i in range(start, start + 500))

    uploaded = upload(server, errors())
    assert uploaded.status_code == 200, uploaded.text
    big = error_line(0, pad=5100)

    with watched(server) as seen:
        created = create(server, uploaded.json()["id"]).json()
        sent = upload(server, (big * 64 for _ in range(600)), who="bob")   # ~200 MiB beside it
        done = wait_batch(server, created["id"], ended)
    assert sent.status_code == 200, sent.text
    assert httpx.delete(f"{server.url}/v1/files/{sent.json()['id']}", headers=auth("bob")).status_code == 200
    assert done["status"] == "completed" and done["request_counts"]["failed"] == 50_000
    assert seen["health_s"] < 1.0, seen


def test_400_half_sent_connections_leave_health_and_a_grade_working(server):
    bound = int(re.search(r"connections: at most (\d+) open \(file limit (\d+)\)", server.log).group(1))
    assert bound >= 1000   # in the thousands (the machine's file limit allowing), said at start-up
    held = []
    try:
        for i in range(400):
            sock = connect(server)
            # Half the heads unfinished, half the bodies.
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 else upload_head() + b"--")
            held.append(sock)
        started = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        row = httpx.post(server.url + "/v1/grade", json=short_record(1), headers=auth("bob"), timeout=120).json()
        assert row["id"] == "r1" and row["score"] in (1, 2, 3, 4, 5), row
    finally:
        for sock in held:
            sock.close()


# -- queries and messages ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/batches", "/v1/files"])
@pytest.mark.parametrize("value", ["²", "１", "-1", "0", "1" * 30])
def test_a_limit_that_only_looks_like_a_number_is_400_naming_it(server, path, value):
    response = httpx.get(server.url + path, params={"limit": value}, headers=auth())
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit", response.text


def test_an_unknown_after_is_400_and_long_ids_are_cut_in_messages(server):
    for path in ("/v1/batches", "/v1/files"):
        response = httpx.get(server.url + path, params={"after": "nope"}, headers=auth())
        assert response.status_code == 400 and response.json()["error"]["param"] == "after"
    response = httpx.get(server.url + "/v1/batches/" + "b" * 40_000, headers=auth())
    assert response.status_code == 404 and len(response.json()["error"]["message"]) < 200


def test_a_queued_batchs_input_cannot_be_deleted_and_if_it_vanishes_the_message_has_no_path(server):
    first = upload(server, (chat_line(i, "q") for i in range(6))).json()
    ahead = create(server, first["id"]).json()            # alice's batches run one at a time
    second = upload(server, [chat_line(0, "v")]).json()
    queued = create(server, second["id"]).json()
    refused = httpx.delete(f"{server.url}/v1/files/{second['id']}", headers=auth())
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "file_in_use"
    (server.data / "files" / second["id"]).unlink()       # gone from disk behind the server's back
    failed = wait_batch(server, queued["id"], ended)
    wait_batch(server, ahead["id"], ended)
    message = failed["errors"]["data"][0]["message"]
    assert failed["status"] == "failed" and "gone" in message
    assert "/" not in message and "Errno" not in message and str(server.data) not in message


# -- fairness and per-key bounds --------------------------------------------------------------------------

def test_a_second_keys_one_line_batch_finishes_while_the_first_keys_queue_runs(server):
    bob_ids = []
    started = time.monotonic()
    for b in range(4):
        uploaded = upload(server, (chat_line(i, f"b{b}-") for i in range(8)), who="bob").json()
        bob_ids.append(create(server, uploaded["id"], who="bob").json()["id"])
    wait_batch(server, bob_ids[0], lambda s: s["request_counts"]["completed"] >= 1, who="bob")
    line_s = (time.monotonic() - started)   # an upper bound on one line's time, for the report below
    alice_file = upload(server, [chat_line(0, "a")]).json()
    asked = time.monotonic()
    alice = create(server, alice_file["id"]).json()
    done = wait_batch(server, alice["id"], ended)
    waited = time.monotonic() - asked
    still = [batch(server, i, "bob")["status"] for i in bob_ids]
    print(f"\nalice's 1-line batch ended {waited:.2f} s after it was created (bob's first line took at most "
          f"{line_s:.2f} s); bob's batches then: {still}")
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
    assert not all(s == "completed" for s in still), still   # bob's queue still runs
    for batch_id in bob_ids:
        wait_batch(server, batch_id, ended, who="bob")


def test_each_key_has_its_own_bound_on_active_batches(server):
    uploaded = upload(server, (chat_line(i, "m") for i in range(8)), who="bob").json()
    made = [create(server, uploaded["id"], who="bob") for _ in range(MAX_ACTIVE)]
    assert all(r.status_code == 200 for r in made), [r.text for r in made]
    refused = create(server, uploaded["id"], who="bob")
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "too_many_batches", refused.text
    assert "--batch-key-max-active" in error["message"] and "cancel" in error["message"]
    other = upload(server, [chat_line(0, "o")]).json()
    assert create(server, other["id"]).status_code == 200   # the other key is not held back
    for response in made:
        cancel = httpx.post(f"{server.url}/v1/batches/{response.json()['id']}/cancel", headers=auth("bob"), json={})
        assert cancel.status_code == 200, cancel.text
    for response in made:
        assert wait_batch(server, response.json()["id"], ended, who="bob")["status"] in ("cancelled", "completed")


def test_after_everything_no_500_and_no_traceback(server):
    metrics = httpx.get(server.url + "/metrics", headers=auth()).text
    assert not re.search(r'status="5\d\d"', metrics), [x for x in metrics.splitlines() if 'status="5' in x]
    assert "Traceback" not in server.log and "unexpected error" not in server.log, server.log[-3000:]
