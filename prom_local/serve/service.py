"""The service's state: configuration, the one engine and Judge (loaded in the background), the
bounded queue, the metrics, and the checks every endpoint makes (key, body size, readiness)."""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from starlette.requests import Request

from ..engine import CONTINUATION_RESERVE, Engine, EngineConfig, GenOutput, SamplingParams
from ..judge import Judge
from .bridge import Admission, Flight
from .errors import ApiError, not_ready, overloaded, unauthorized
from .metrics import ServeMetrics

log = logging.getLogger("prom_local.serve")
# A request built inside the server for a batch line carries its owner here (an ASGI scope key no
# network client can set): its key was checked when the batch was created.
OWNER_SCOPE = "prom_local.owner"


@dataclass
class ServeConfig:
    model_path: Path
    model_name: str
    profile: str = "prometheus-ko"
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    api_key: str | None = None
    # Named keys (name -> key), from `--api-key-file` lines `name=key`: the name owns files and
    # batches. A minimal stand-in for the serve-hardening branch's named keys.
    api_keys: dict[str, str] | None = None
    max_body_bytes: int = 4 << 20
    max_prompt_tokens: int | None = None   # None = what the context holds
    max_queue: int = 64                    # sequences waiting beyond the parallel slots
    log_requests: bool = False
    batches: object | None = None          # batches.BatchConfig: the Batch API and its data dir


class Service:
    def __init__(self, config: ServeConfig, on_status: Callable[[str], None] | None = None,
                 on_ready: Callable[["Service"], None] | None = None):
        # on_ready(service) is called from the loading thread once loading ends (load_error set
        # if it failed).
        self.config = config
        self._say = on_status or (lambda message: None)
        self._on_ready = on_ready
        self.judge: Judge | None = None
        self.load_error: BaseException | None = None
        self.admission: Admission | None = None
        self.metrics = ServeMetrics(self._snapshot)
        self._loaded = threading.Event()
        self._closed = False
        self._key = config.api_key.encode() if config.api_key else None
        self._keys = {name: key.encode() for name, key in (config.api_keys or {}).items()}
        self._facts: dict | None = None

    # -- life -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model (in a background thread: /health answers 503 meanwhile)."""
        try:
            engine = Engine(self.config.model_path, self.config.engine, on_status=self._say)
            judge = Judge.with_engine(engine, profile=self.config.profile, sampling=self.config.sampling)
        except BaseException as exc:
            self.load_error = exc
            self._loaded.set()
            if self._on_ready is not None:
                self._on_ready(self)
            return
        if self._closed:  # shut down while loading
            judge.close()
            return
        self.admission = Admission(engine.n_parallel + self.config.max_queue)
        self.judge = judge
        self._loaded.set()
        if self._on_ready is not None:
            self._on_ready(self)

    def close(self) -> None:
        """Cancel what is in flight (each sequence ends at the engine's next step) and free the model."""
        self._closed = True
        if self.judge is not None:
            self.judge.close()

    @property
    def ready(self) -> bool:
        return self.judge is not None and not self._closed

    @property
    def engine(self) -> Engine:
        return self.judge.engine

    def _snapshot(self) -> dict | None:
        return self.judge.engine.scheduler.snapshot() if self.ready else None

    def describe(self) -> dict:
        info = {"model": self.config.model_name, "path": str(self.config.model_path)}
        if self.ready:
            info.update(backend=self.engine.describe()["backend"], parallel=self.engine.n_parallel,
                        n_ctx=self.engine.n_ctx, max_prompt_tokens=self.max_prompt_tokens,
                        profile=self.judge.profile.name, **self._model_facts())
        return info

    def _model_facts(self) -> dict:
        """What a `--server` client's model panel shows (quant, size, GPU layers), read once."""
        if self._facts is None:
            try:
                from ..model_info import describe_judge

                model = describe_judge(self.judge)
                self._facts = {"quant": model.quant, "size_bytes": model.size_bytes,
                               "layers_on_gpu": model.layers_on_gpu, "n_layer": model.n_layer}
            except Exception:  # an engine without a GGUF behind it (a test's): the facts are optional
                self._facts = {}
        return self._facts

    @property
    def max_prompt_tokens(self) -> int:
        fits = self.engine.n_ctx - CONTINUATION_RESERVE - 1
        limit = self.config.max_prompt_tokens
        return min(fits, limit) if limit else fits

    # -- checks -----------------------------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        self.authenticate(request)

    def authenticate(self, request: Request) -> str:
        """The caller's API-key name ("default" when the server has no named keys), or 401."""
        internal = request.scope.get(OWNER_SCOPE)
        if internal is not None:
            return internal
        if self._keys:
            given = _bearer(request)
            # Every key is compared (constant time each), so which one matched does not show.
            matched = [name for name, key in self._keys.items() if hmac.compare_digest(given, key)]
            if not matched:
                raise unauthorized()
            return matched[0]
        self._check_single_key(request)
        return "default"

    def _check_single_key(self, request: Request) -> None:
        if self._key is None:
            return
        given = _bearer(request)
        # Constant time: how much of a guess is right must not show in the response time.
        if not hmac.compare_digest(given, self._key):
            raise unauthorized()

    def require_judge(self) -> Judge:
        if not self.ready:
            raise not_ready()
        return self.judge

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = ApiError(413, f"The request body is larger than {limit} bytes (--max-body-bytes).",
                           code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    def admit(self, n: int) -> None:
        """Take room for n sequences in the bounded queue, or refuse with 503 + Retry-After."""
        if not self.admission.try_take(n):
            raise overloaded(retry_after=max(1, n))
        with self.metrics._lock:
            self.metrics.admitted += n

    def release(self, n: int) -> None:
        self.admission.give_back(n)
        with self.metrics._lock:
            self.metrics.admitted -= n

    def submit(self, requests: list) -> Flight:
        """Submit an HTTP request's engine requests, or refuse them when the queue is full."""
        self.admit(len(requests))

        def on_end(out: GenOutput | None) -> None:
            self.release(1)
            if out is not None:
                self.metrics.output(out.prompt_tokens, out.reused_prompt_tokens, len(out.tokens),
                                    out.finish_reason == "cancelled")

        return Flight(self.engine, requests, on_end=on_end)


def _bearer(request: Request) -> bytes:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""
