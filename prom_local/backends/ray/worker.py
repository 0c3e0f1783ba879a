"""The engine side of `score --ray`: one llama.cpp engine, fed continuously, inside a Ray actor.

This module does not import Ray at the top: `driver.py` wraps `EngineWorker` with
`ray.remote(...)` on the driver, and Ray workers import it by name (the driver ships this package to
every node, so all nodes run the driver's code).

Records arrive in small batches (`exchange`) but the engine sees one unbroken stream, so its slots
stay full across batches and its KV prefix cache survives from one batch to the next. A batch is
therefore not a barrier: results come back as they finish, whichever batch they came in.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from pathlib import Path

from ...engine import EngineConfig, SamplingParams
from ...errors import ModelNotFound, PromLocalError
from ...judging.grades import Grade
from ...store.manifest import sha256_file
from ...judging.records import Record

# How long the engine may wait for the next record when the inbox is empty before it ends the
# current stream and finishes what it holds. While it waits, its other slots are not decoding, so
# this stays short; the driver keeps the inbox ahead of the engine so it is rarely reached.
FEED_IDLE_SECONDS = 0.05
# Put in the outbox when the engine thread dies, so that an exchange waiting for results wakes up
# and reports the failure at once.
_FAILED = object()


def _user_error(exc: PromLocalError) -> dict:
    # User errors travel as data, not as exceptions: Ray would wrap them with a remote traceback,
    # and the driver wants to add which node said it.
    return {"error": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}


def _pull(spec: str, store: Path | None) -> None:
    from ...store.models import store_dir
    from ...store.pull import pull_gguf

    try:
        pull_gguf(spec, store=store)
    except PromLocalError as exc:
        raise ModelNotFound(f"{spec} is not in this node's model store ({store_dir(store)}), and pulling it "
                            f"failed: {exc}") from None


def node_info() -> dict:
    """Where this actor runs (called inside a Ray worker)."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid(),
            "cpus": len(os.sched_getaffinity(0)), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "code": str(Path(__file__).resolve().parents[2])}   # this node's prom_local/


def prepare_model(spec: str | None, models_dir: str | None, allow_pull: bool = True) -> dict:
    """Resolve the model on this node (pulling a store model if missing) and hash the file: the
    file's facts, or a user error as data (_user_error). Also used by serve/cluster/engine_actor.py."""
    from ...settings import DEFAULT_MODEL
    from ...store.models import read_manifest, resolve_model, store_dir

    name = spec or DEFAULT_MODEL
    try:
        pulled = False
        try:
            resolved = resolve_model(name, models_dir)
        except ModelNotFound as exc:
            if name.endswith(".gguf") or os.sep in name:
                raise ModelNotFound(f"{exc} (with --ray, a --model path must exist on every node: "
                                    "put the file on a shared filesystem, or use a store name)") from None
            if not allow_pull:
                raise
            _pull(name, Path(models_dir) if models_dir else None)
            resolved = resolve_model(name, models_dir)
            pulled = True
        started = time.perf_counter()
        digest = sha256_file(resolved.path)
        info = {"path": str(resolved.path), "name": resolved.name, "quant": resolved.quant,
                "profile": resolved.profile, "sha256": digest, "size": resolved.path.stat().st_size,
                "hash_seconds": round(time.perf_counter() - started, 3), "pulled": pulled}
        if resolved.name and resolved.quant:
            manifest = read_manifest(store_dir(models_dir), resolved.name) or {}
            recorded = (manifest.get("files") or {}).get(resolved.quant, {}).get("sha256")
            if recorded and recorded != digest:
                info["manifest_sha256"] = recorded
        return info
    except PromLocalError as exc:
        return _user_error(exc)


class EngineWorker:
    """A Judge behind a queue. One per Ray actor; every method is called by the driver. There is no
    close(): the driver ends an actor with ray.kill, and the process's exit frees the model."""

    def __init__(self) -> None:
        self._judge = None
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._both_orders = False

    # -- setup ----------------------------------------------------------------------------------
    def node_info(self) -> dict:
        return node_info()

    def prepare_model(self, spec: str | None, models_dir: str | None, allow_pull: bool = True) -> dict:
        return prepare_model(spec, models_dir, allow_pull)

    def load(self, path: str, profile: str, engine: EngineConfig, sampling: SamplingParams,
             both_orders: bool = False) -> dict:
        from ...judging.judge import Judge

        self._both_orders = both_orders
        try:
            self._judge = Judge(path, profile=profile, engine=engine, sampling=sampling)
        except PromLocalError as exc:
            return _user_error(exc)
        self._thread = threading.Thread(target=self._run, name="prom-local-engine", daemon=True)
        self._thread.start()
        return self._judge.describe_engine()

    # -- work -----------------------------------------------------------------------------------
    def exchange(self, records: list[Record], wait: float) -> tuple[list[Grade], int]:
        """Queue `records`, then return the grades finished so far (waiting up to `wait` seconds
        for the first one) and how many records still wait for a slot. One call carries both
        directions, so the driver needs one call in flight per actor and learns of a dead actor
        through it."""
        for record in records:
            self._inbox.put(record)
        out: list[Grade] = []
        try:
            item = self._outbox.get(timeout=wait)
            while True:
                if item is _FAILED:
                    break
                out.append(item)
                item = self._outbox.get_nowait()
        except queue.Empty:
            pass
        if self._failure is not None:
            raise RuntimeError(f"the engine stopped: {self._failure!r}") from self._failure
        return out, self._inbox.qsize()

    def _run(self) -> None:
        try:
            while True:
                first = self._inbox.get()
                for grade in self._judge.grade_stream(self._feed(first), both_orders=self._both_orders):
                    self._outbox.put(grade)
        except BaseException as exc:  # surfaced to the driver by the next exchange
            self._failure = exc
            self._outbox.put(_FAILED)

    def _feed(self, first: Record):
        yield first
        while True:
            try:
                item = self._inbox.get(timeout=FEED_IDLE_SECONDS)
            except queue.Empty:
                return  # the engine finishes what it holds; the next record starts a new stream
            yield item
