"""The service's state: configuration, the one engine and Judge (loaded in the background), the
bounded queue, the metrics, and the checks every endpoint makes (key, body size, readiness)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import anyio
from starlette.requests import Request

from ..engine import CONTINUATION_RESERVE, Engine, EngineConfig, GenOutput, SamplingParams
from ..judging.judge import Judge
from .auth import DEFAULT_NAME, KeyRing, bearer_token
from .bridge import Admission, Flight
from .errors import ApiError, not_ready, overloaded, unauthorized
from .metrics import ServeMetrics
from ..settings import DEFAULT_PROFILE

if TYPE_CHECKING:   # batches/ imports this module: the type only, for readers and checkers
    from .batches.config import BatchConfig

log = logging.getLogger("prom_local.serve")


@dataclass
class ServeConfig:
    model_path: Path
    model_name: str
    profile: str = DEFAULT_PROFILE
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    api_keys: dict[str, str] = field(default_factory=dict)   # name -> key; empty = no authentication
    max_body_bytes: int = 4 << 20
    max_prompt_tokens: int | None = None   # None = what the context holds
    max_tokens_cap: int | None = None      # most new tokens one sequence may ask for (None: the context left)
    allowed_hosts: frozenset[str] = frozenset()   # Host header values answered (empty: any; tests' in-process apps)
    max_queue: int = 64                    # sequences waiting beyond the parallel slots
    log_requests: bool = False
    request_read_timeout: float = 30.0     # seconds to receive a request's body (408 after)
    batches: "BatchConfig | None" = None   # the Batch API and its data dir (None: no Batch API)


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
        self.metrics = ServeMetrics(self._snapshot, lambda: self.admission.admitted if self.admission else 0)
        self._loaded = threading.Event()
        self._closed = False
        self._keys = KeyRing(config.api_keys)
        self._facts: dict | None = None
        self.longest_token_bytes = 1 << 20
        # Told when admitted sequences end (the Batch API's runner waits for a free slot on it).
        self.on_release: Callable[[], None] | None = None
        # Where the endpoints' cores run (cores.py): set by create_app, LocalCores unless --ray.
        self.cores = None

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
        self.longest_token_bytes = _longest_token(engine.model)
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
    def loaded(self) -> bool:
        """Loading has ended (ready, failed, or with `serve --ray`, engines that may come and go)."""
        return self._loaded.is_set()

    @property
    def engine(self) -> Engine:
        return self.judge.engine

    @property
    def n_parallel(self) -> int:
        """Sequences decoded at once by all of this service's engines."""
        return self.judge.n_parallel if self.ready else 1

    @property
    def parallel_per_engine(self) -> int:
        """The most sequences one request may take (its samples decode on one engine)."""
        return self.n_parallel

    def _snapshot(self) -> dict | None:
        return self.judge.snapshot() if self.ready else None

    def describe(self, public: bool = False) -> dict:
        """What /v1/models says about the model and engine. `public` (GET /health, which needs no
        key): the file's name only, not where it lies on the server's disk."""
        path = self.config.model_path.name if public else str(self.config.model_path)
        info = {"model": self.config.model_name, "path": path}
        if self.ready:
            info.update(backend=self.engine.describe()["backend"], parallel=self.engine.n_parallel,
                        n_ctx=self.engine.n_ctx, max_prompt_tokens=self.max_prompt_tokens,
                        profile=self.judge.profile.name, **self._model_facts())
        return info

    def _model_facts(self) -> dict:
        """What a `--server` client's model panel shows (quant, size, GPU layers), read once."""
        if self._facts is None:
            try:
                model = self.judge.model_info()
                self._facts = {"quant": model.quant, "size_bytes": model.size_bytes,
                               "layers_on_gpu": model.layers_on_gpu, "n_layer": model.n_layer}
            except Exception:  # an engine without a GGUF behind it (a test's): the facts are optional
                self._facts = {}
        return self._facts

    @property
    def max_prompt_bytes(self) -> int:
        """Text longer than this (UTF-8 bytes) cannot fit in max_prompt_tokens whatever its
        tokens are: the check made before any rendering or tokenizing."""
        return self.max_prompt_tokens * self.longest_token_bytes

    @property
    def max_prompt_tokens(self) -> int:
        fits = self.engine.n_ctx - CONTINUATION_RESERVE - 1
        limit = self.config.max_prompt_tokens
        return min(fits, limit) if limit else fits

    # -- checks -----------------------------------------------------------------------------------
    def authenticate(self, request: Request) -> str:
        """The caller's key name (its identity in logs, metrics and as an owner), or a 401 for a
        missing or wrong key. Without keys configured every caller is "default"."""
        if not self._keys:
            return DEFAULT_NAME
        name = self._keys.name_of(bearer_token(request.headers.get("authorization", "")))
        if name is None:
            self.metrics.caller(None)
            raise unauthorized()
        self.metrics.caller(name)
        request.state.caller = name
        return name

    def max_new_tokens(self, n_prompt: int) -> int:
        """The most new tokens a request with this prompt may ask for: what the context holds
        after it (and --max-tokens-cap)."""
        left = max(1, self.engine.n_ctx - n_prompt - CONTINUATION_RESERVE)
        cap = self.config.max_tokens_cap
        return min(left, cap) if cap else left

    @property
    def max_records(self) -> int:
        """Records (valid or not) in one /v1/grade request: the bounded queue's size."""
        return self.admission.limit

    def require_judge(self) -> Judge:
        if not self.ready:
            raise not_ready()
        return self.judge

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and (
                len(declared) > 19 or int(declared) > limit):
            raise _too_big(limit)
        body = bytearray()
        # A client that sends its body slowly holds a connection and a task: it gets this long.
        with anyio.move_on_after(self.config.request_read_timeout) as deadline:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _too_big(limit)
        if deadline.cancelled_caught:
            raise ApiError(408, f"The request body did not arrive within {self.config.request_read_timeout:g} s.",
                           code="request_timeout")
        return bytes(body)

    def admit(self, n: int) -> None:
        """Take room for n sequences in the bounded queue, or refuse with 503 + Retry-After."""
        if not self.admission.try_take(n):
            raise overloaded(retry_after=max(1, n))

    def release(self, n: int) -> None:
        self.admission.give_back(n)
        if self.on_release is not None:   # called from engine threads too
            self.on_release()

    def submit(self, requests: list) -> Flight:
        """Submit an HTTP request's engine requests, or refuse them when the queue is full."""
        self.admit(len(requests))

        def on_end(out: GenOutput | None) -> None:
            self.release(1)
            if out is not None:
                self.metrics.output(out.prompt_tokens, out.reused_prompt_tokens, len(out.tokens),
                                    out.finish_reason == "cancelled")

        return Flight(self.engine, requests, on_end=on_end)


def _too_big(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than {limit} bytes (--max-body-bytes).",
                    code="request_too_large")


def _longest_token(model) -> int:
    """The most bytes one token of the vocabulary stands for (read once, at load)."""
    try:
        return max(1, max(len(model.token_bytes(t)) for t in range(model.n_vocab)))
    except Exception:   # a model object without a vocabulary to read: no byte bound tighter than the body's
        return 1 << 20
