#!/usr/bin/env python
"""The path a batch line and a POST /v1/grade request take through prom_local's modules, in process.

Runs each once on the scripted engine (tests/fake_engine.py: a real tokenizer, no decoding), with
sys.setprofile (and threading.setprofile, for the grading thread) recording which prom_local module
each Python call and return lands in. Prints, per path: the stays (runs of events in one module,
merged when consecutive), the modules entered, and the returns to a module already left, then the
module sequence itself. Works on older checkouts too: put the checkout first on PYTHONPATH.

    PYTHONPATH=. python benchmarks/request_path.py
    PYTHONPATH=. python benchmarks/request_path.py --time 200    # ms per call of each, no tracing
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_engine import FakeEngine  # noqa: E402
from helpers import short_record  # noqa: E402
from prom_local.judging.judge import Judge  # noqa: E402
from prom_local.serve import ServeConfig, Service, create_app  # noqa: E402
from prom_local.serve.bridge import Admission  # noqa: E402


class Path_:
    """Module of every call/return event of prom_local code, from the threads it ran in."""

    def __init__(self):
        self.events: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def hook(self, frame, event, arg):
        # The service's own modules, and the first module it calls into below it (judging, engine):
        # what lies deeper is the library's business, the same for every caller.
        if event not in ("call", "return"):
            return
        name = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        if name.startswith("prom_local") and (name.startswith("prom_local.serve") or
                                              caller.startswith("prom_local.serve")):
            with self._lock:
                self.events.append(name.removeprefix("prom_local."))

    def __enter__(self):
        threading.setprofile(self.hook)
        sys.setprofile(self.hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)

    def summary(self) -> dict:
        stays: list[str] = []
        for module in self.events:
            if not stays or stays[-1] != module:
                stays.append(module)
        returns = sum(1 for i, m in enumerate(stays) if m in stays[:i])
        return {"stays": len(stays), "modules": len(set(stays)), "returns": returns, "path": stays}


def service(smollm2: Path) -> Service:
    config = ServeConfig(model_path=Path("unused.gguf"), model_name="judge")
    svc = Service(config)
    svc.judge = Judge.with_engine(FakeEngine(smollm2))
    svc.admission = Admission(1 + config.max_queue)
    return svc


async def batch_line(svc: Service) -> dict:
    from prom_local.serve.batches import calls
    body = short_record(1)
    # Older checkouts took the line's body as JSON bytes and dressed it as an HTTP request.
    takes_bytes = "bytes" in str(inspect.signature(calls.call).parameters["body"].annotation)
    gone = asyncio.Event()
    with Path_() as path:
        status, _ = await calls.call(svc, "/v1/grade", json.dumps(body).encode() if takes_bytes else body,
                                     "alice", gone)
    assert status == 200, status
    return path.summary()


async def grade_request(svc: Service) -> dict:
    import httpx
    transport = httpx.ASGITransport(app=create_app(svc, load=False))   # the app in this thread and loop
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        await http.post("/v1/grade", json=short_record(2))   # warm: imports and first-call setup
        with Path_() as path:
            response = await http.post("/v1/grade", json=short_record(1))
    assert response.status_code == 200, response.text
    return path.summary()


async def timed(svc: Service, n: int) -> dict:
    """Seconds per call, n calls of each in a row (the scripted engine: what is timed is the
    service's own work around the engine, the part a refactoring of serve/ changes)."""
    import time

    import httpx
    from prom_local.serve.batches import calls
    takes_bytes = "bytes" in str(inspect.signature(calls.call).parameters["body"].annotation)
    body = json.dumps(short_record(1)).encode() if takes_bytes else short_record(1)
    started = time.perf_counter()
    for _ in range(n):
        await calls.call(svc, "/v1/grade", body, "alice", asyncio.Event())
    line_s = (time.perf_counter() - started) / n
    transport = httpx.ASGITransport(app=create_app(svc, load=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        started = time.perf_counter()
        for _ in range(n):
            await http.post("/v1/grade", json=short_record(1))
    return {"batch line ms": 1000 * line_s, "/v1/grade ms": 1000 * (time.perf_counter() - started) / n}


if __name__ == "__main__":
    from conftest import smollm2_gguf
    svc = service(smollm2_gguf())
    if sys.argv[1:2] == ["--time"]:
        print(asyncio.run(timed(svc, int(sys.argv[2]))))
        sys.exit()
    asyncio.run(batch_line(svc))   # warm: imports and first-call setup
    for name, result in (("batch line", asyncio.run(batch_line(svc))), ("/v1/grade", asyncio.run(grade_request(svc)))):
        print(f"{name}: {result['stays']} stays in {result['modules']} modules, {result['returns']} returns "
              "to a module already left")
        print("   " + " > ".join(result["path"]))
