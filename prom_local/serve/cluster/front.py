"""The front of `serve --ray`: a Service whose engines are a Ray cluster's (pool.py), and the cores
that send each parsed request there.

The front admits a request (the bounded queue, counting its sequences: records x samples, or the
chat's n) before it sends it, so --max-queue bounds the whole cluster; every check of the body
beyond the door (fields, prompt length, sampling) is made by the engine's own core, so its 400s
are exactly a local server's.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from sse_starlette.sse import EventSourceResponse

from ..bridge import Admission
from ..cores import Gone
from ..errors import ApiError, ClientGone
from ..service import ServeConfig, Service
from .pool import EngineLost, EnginePool

log = logging.getLogger("prom_local.serve")
RETRY_AFTER_S = 2


def engines_lost(reason: str) -> ApiError:
    return ApiError(503, f"No engine could take this request ({reason}); retry later.", type="server_error",
                    code="engines_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})


class ClusterService(Service):
    """serve's Service with the cluster's engines in place of one in this process."""

    def __init__(self, config: ServeConfig, pool: EnginePool, on_status: Callable[[str], None] | None = None,
                 on_ready: Callable[[Service], None] | None = None):
        # `pool` is connected already (EnginePool.connect, in the main thread); load() starts it.
        super().__init__(config, on_status=on_status, on_ready=on_ready)
        self.pool = pool
        self.cores = ClusterCores(self.pool)
        self.metrics.engines = self._engine_rows

    def load(self) -> None:
        try:
            self.pool.start()
        except BaseException as exc:
            self.load_error = exc
        else:
            if not self.config.model_name:
                self.config.model_name = self.pool.model["path"].rsplit("/", 1)[-1].removesuffix(".gguf")
            self.admission = Admission(sum(e.parallel for e in self.pool.engines) + self.config.max_queue)
        self._loaded.set()
        if self._on_ready is not None:
            self._on_ready(self)

    def close(self) -> None:
        self._closed = True
        self.pool.close()

    @property
    def ready(self) -> bool:
        return self.admission is not None and not self._closed and bool(self.pool.ready)

    @property
    def n_parallel(self) -> int:
        return sum(e.parallel for e in self.pool.ready) or 1

    @property
    def parallel_per_engine(self) -> int:
        return min((e.parallel for e in self.pool.engines), default=1)

    def describe(self, public: bool = False) -> dict:
        info = {"model": self.config.model_name, "engines": self.pool.describe(public)}
        if self.pool.model:
            model = self.pool.model
            info.update(path=model["path"].rsplit("/", 1)[-1] if public else model["path"],
                        sha256=model["sha256"], parallel=self.n_parallel, backend="ray",
                        profile=self.config.profile)
            if self.pool.engines and self.pool.engines[0].info:
                first = self.pool.engines[0].info   # what a `--server` client's model panel shows
                info.update({k: first[k] for k in ("n_ctx", "max_prompt_tokens", "quant", "size_bytes",
                                                   "layers_on_gpu", "n_layer") if k in first})
        return info

    def _snapshot(self) -> dict | None:
        if not self.ready:
            return None
        total: dict = {}
        for engine in self.pool.ready:
            for name, value in (engine.status.get("snapshot") or {}).items():
                if isinstance(value, (int, float)):
                    total[name] = total.get(name, 0) + value
        return total or None

    def _engine_rows(self) -> list[dict]:
        return [{"engine": str(e.index), "ready": e.ready, "requests": e.requests, "busy": e.status.get("busy", 0),
                 "restarts": e.restarts, "retried": e.retried, **e.tokens} for e in self.pool.engines]


class ClusterCores:
    """serve/cores.py's interface, answered by the cluster's engines."""

    def __init__(self, pool: EnginePool):
        self.pool = pool

    async def grade(self, service: Service, caller: str, body: object, *, samples: int | None,
                    gone: Gone) -> dict | list:
        weight = _grade_weight(body, samples)
        return await self._call(service, "grade", _grade_key(body), weight, (caller, body, samples), gone)

    async def chat(self, service: Service, caller: str, body: object, *, gone: Gone, stream: bool):
        weight = _chat_weight(body)
        if stream and isinstance(body, dict) and body.get("stream") is True:
            return await self._stream(service, caller, body, weight)
        return await self._call(service, "chat", _chat_key(body), weight, (caller, body), gone)

    async def _call(self, service: Service, method: str, key, weight: int, args: tuple, gone: Gone):
        weight = min(weight, service.admission.limit)   # more: the engine's core answers the 400
        service.admit(weight)
        try:
            answer = await self.pool.call(method, key, weight, args, gone)
        except EngineLost as exc:
            raise engines_lost(str(exc)) from None
        finally:
            service.release(weight)
        return _unpack(answer)

    async def _stream(self, service: Service, caller: str, body: dict, weight: int) -> EventSourceResponse:
        """SSE from an engine's chat_stream; before the first event the request may still move to
        another engine, after it a lost engine ends the stream with a 503 error event."""
        weight = min(weight, service.admission.limit)
        service.admit(weight)
        try:
            engine, rid, events, first = await self.pool.stream(_chat_key(body), weight, (caller, body))
        except EngineLost as exc:
            service.release(weight)
            raise engines_lost(str(exc)) from None
        except BaseException:   # a bug there (the door answers 500), or this task cancelled
            service.release(weight)
            raise
        if first[0] == "error":
            self.pool.done(engine, weight)
            service.release(weight)
            _unpack(("error", *first[1:]))
        return EventSourceResponse(self._relay(service, engine, rid, events, first, weight), ping=15, sep="\n")

    async def _relay(self, service, engine, rid, events, first, weight):
        finished = False
        try:
            yield {"data": first[1]}
            async for ref in events:
                yield {"data": (await ref)[1]}
            finished = True
        except Exception as exc:   # the engine died mid-answer (or, not lost, failed: a bug there)
            if self.pool.died(exc):
                self.pool.lost(engine, exc, held=True)
                error = engines_lost("the engine was lost mid-answer")
            else:
                log.exception("unexpected error from an engine's stream")
                error = ApiError(500, f"internal error: {type(exc).__name__}", type="server_error")
            yield {"data": json.dumps(error.body())}
            finished = True
        finally:
            if not finished:   # the client left
                engine.handle.cancel.remote(rid)
            self.pool.done(engine, weight)
            service.release(weight)


def _unpack(answer: tuple):
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "gone":
        raise ClientGone()
    _, status, body, headers = answer
    error = body.get("error", {})
    raise ApiError(status, error.get("message", ""), type=error.get("type", "invalid_request_error"),
                   param=error.get("param"), code=error.get("code"), headers=headers)


def _records(body: object) -> object:
    return body.get("records", body) if isinstance(body, dict) and "records" in body else body


def _grade_weight(body: object, samples: int | None) -> int:
    """The sequences a /v1/grade body takes (an estimate made before any parsing: the engine's
    core counts them exactly and refuses what is over its bound)."""
    records = _records(body)
    n = len(records) if isinstance(records, list) else 1
    sampling = body.get("sampling") if isinstance(body, dict) else None
    per = samples or (sampling.get("n") if isinstance(sampling, dict) else None)
    per = per if isinstance(per, int) and not isinstance(per, bool) and per > 0 else 1
    both = isinstance(body, dict) and body.get("both_orders") is True
    return max(1, n * per * (2 if both else 1))


def _grade_key(body: object) -> int | None:
    records = _records(body)
    first = records[0] if isinstance(records, list) and records else records
    instruction = (first.get("orig_instruction") or first.get("instruction")) if isinstance(first, dict) else None
    return hash(instruction[:4096]) if isinstance(instruction, str) else None


def _chat_weight(body: object) -> int:
    n = body.get("n", 1) if isinstance(body, dict) else 1
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _chat_key(body: object) -> int | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    content = first.get("content") if isinstance(first, dict) else None
    return hash(content[:4096]) if isinstance(content, str) else None
