"""The front's view of the engines of `serve --ray`: where each request goes, which engines are
alive, and what happens when one dies.

- Choice: a request goes to a ready engine with a free slot, preferring the engine that last took
  the same instruction (its KV cache holds that prompt prefix), else the least busy one. "Busy" is
  the sequences the front has sent there and not had back, against the engine's --parallel.
- Faults: each engine actor is created with `max_restarts`, so Ray starts a dead one again (on its
  node, or another if the node is gone) and the new process loads the model itself. A request held
  by an engine that died is sent once more to another ready engine; if that fails too, or none is
  ready, it is answered 503 with Retry-After. A batch line answered 503 is run again by the Batch
  API's runner, and stored once (serve/batches/runner.py).
- Health: a monitor thread asks every engine for its status each second (never on the event loop);
  an engine that does not answer within STATUS_TIMEOUT_S is not ready until it answers again. A new
  process id means Ray replaced it: its model is checked against the others' sha256 again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from ...backends.ray.cluster import ActorSlot, connect, import_ray, plan_actors
from ...errors import ClusterError, ModelMismatch
from ...settings import ray_placement_timeout_s
from ..service import ServeConfig

log = logging.getLogger("prom_local.serve")
MONITOR_S = 1.0
STATUS_TIMEOUT_S = 5.0
MAX_RESTARTS = 100           # per engine; past it the engine stays lost (a crash loop, not a fault)
LOAD_TIMEOUT_S = 900.0       # first load of every engine (hashing and loading a large GGUF)
AFFINITY_KEYS = 4096         # instructions remembered for prefix affinity


class EngineLost(Exception):
    """The engine holding a request died, or none is ready: the request may go elsewhere."""


@dataclass
class EngineState:
    index: int
    slot: ActorSlot
    handle: object = None
    info: dict = field(default_factory=dict)
    parallel: int = 1
    ready: bool = False
    lost: str | None = None        # why it is not ready (None when ready)
    pid: int | None = None
    inflight: int = 0              # sequences sent by the front and not back
    requests: int = 0
    retried: int = 0               # requests it held when it died (sent elsewhere)
    restarts: int = 0
    status: dict = field(default_factory=dict)
    tokens: collections.Counter = field(default_factory=collections.Counter)   # since the front started

    def public(self) -> dict:
        """What GET /health (no key) shows: nothing about where the engine runs."""
        return {"engine": self.index, "ready": self.ready, "parallel": self.parallel,
                "busy": self.status.get("busy", 0), "restarts": self.restarts}


class EnginePool:
    def __init__(self, spec: str | None, models_dir: str | None, config: ServeConfig, *,
                 address: str = "auto", actors: int | None = None, say: Callable[[str], None] = print):
        self.spec, self.models_dir, self.config = spec, models_dir, config
        self.address, self.n_actors, self.say = address, actors, say
        self.engines: list[EngineState] = []
        self.model: dict = {}
        self.connected_to = ""
        self._lock = threading.Lock()
        self._affinity: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._stop = threading.Event()
        self._ray = None

    # -- start and stop ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Join the cluster, or start the local instance, from the thread that will outlive it:
        Ray's local processes are told to die with the thread that started them (Linux's parent
        death signal), so this must not run in the short-lived load thread."""
        self._ray = import_ray()
        self.connected_to = connect(self.address, verbose=self.config.engine.verbose)

    def start(self) -> None:
        """Start the engines and wait for every one to load (blocking: the load thread of
        serve/app.py calls it, after connect)."""
        if self._ray is None:
            self.connect()
        ray = self._ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        use_gpus = self.config.engine.gpu_layers != 0 and any(
            n.get("Resources", {}).get("GPU", 0) >= 1 for n in nodes)
        slots = plan_actors(nodes, self.n_actors, use_gpus=use_gpus, threads=self.config.engine.n_threads)
        self.engines = [self._create(slot) for slot in slots]
        self.say(f"ray: {self.connected_to}; {len(slots)} engine(s) on "
                 + ", ".join(sorted({s.node_name for s in slots})) + (" (one GPU each)" if use_gpus else ""))
        refs = {e.handle.info.remote(): e for e in self.engines}
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=ray_placement_timeout_s() + LOAD_TIMEOUT_S)
        if late:
            raise ClusterError(f"{len(late)} engine(s) did not start and load the model in time")
        for ref in done:
            engine = refs[ref]
            try:
                self._took_info(engine, ray.get(ref))
            except Exception as exc:
                raise ClusterError(f"the engine on node {engine.slot.node_name} did not start: {_short(exc)}") from None
        self.model = same_file(self.engines, self.spec)
        threading.Thread(target=self._monitor, name="prom-local-engines", daemon=True).start()

    def _create(self, slot: ActorSlot) -> EngineState:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .engine_actor import ServeEngine

        engine_config = dataclasses.replace(self.config.engine, n_threads=slot.threads)
        config = dataclasses.replace(self.config, engine=engine_config, batches=None, api_keys={})
        # soft: a replacement may start on another node when this one is gone.
        handle = self._ray.remote(ServeEngine).options(
            num_cpus=slot.num_cpus, num_gpus=slot.num_gpus, max_restarts=MAX_RESTARTS,
            max_concurrency=1000, scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=True),
        ).remote(self.spec, self.models_dir, config)
        return EngineState(index=slot.index, slot=slot, handle=handle)

    def _took_info(self, engine: EngineState, info: dict) -> None:
        engine.info, engine.parallel, engine.pid = info, max(1, int(info.get("parallel") or 1)), info["pid"]
        engine.ready, engine.lost = True, None

    def close(self) -> None:
        self._stop.set()
        if self._ray is None:
            return
        for engine in self.engines:
            try:
                self._ray.kill(engine.handle, no_restart=True)
            except Exception:   # already gone
                pass

    # -- what the service shows --------------------------------------------------------------------
    @property
    def ready(self) -> list[EngineState]:
        return [e for e in self.engines if e.ready]

    def describe(self, public: bool = False) -> dict:
        rows = [e.public() for e in self.engines]
        if not public:   # GET /v1/models (a key): where each runs, and why one is not ready
            for row, e in zip(rows, self.engines):
                row.update(node=e.slot.node_name, host=e.info.get("hostname"), pid=e.pid,
                           backend=e.info.get("backend"), inflight=e.inflight, lost=e.lost)
        return {"count": len(self.engines), "ready": len(self.ready), "list": rows}

    # -- choosing ----------------------------------------------------------------------------------
    def choose(self, key: int | None, weight: int, exclude: set[int]) -> EngineState:
        """The engine for a request of `weight` sequences (EngineLost when none is ready)."""
        with self._lock:
            ready = [e for e in self.engines if e.ready and e.index not in exclude]
            if not ready:
                raise EngineLost("no engine is ready")
            preferred = self._affinity.get(key) if key is not None else None
            engine = next((e for e in ready if e.index == preferred and e.inflight + weight <= e.parallel), None)
            if engine is None:
                engine = min(ready, key=lambda e: ((e.inflight + weight) / e.parallel, e.requests))
            if key is not None:
                self._affinity[key] = engine.index
                self._affinity.move_to_end(key)
                while len(self._affinity) > AFFINITY_KEYS:
                    self._affinity.popitem(last=False)
            engine.inflight += weight
            engine.requests += 1
            return engine

    def done(self, engine: EngineState, weight: int) -> None:
        with self._lock:
            engine.inflight -= weight

    def lost(self, engine: EngineState, exc: BaseException, *, held: bool = False) -> None:
        """The engine died or stopped answering; `held`: it died holding a request."""
        with self._lock:
            engine.retried += held
            if engine.ready:
                engine.ready, engine.lost = False, _short(exc)
                log.warning("engine %d on %s lost: %s", engine.index, engine.slot.node_name, engine.lost)

    # -- calling -----------------------------------------------------------------------------------
    async def _on_two_engines(self, key: int | None, weight: int, attempt):
        """attempt(engine, rid) on the chosen engine, and once more on another if the first dies
        with the request (attempt raises EngineLost then). EngineLost when both died or none is ready."""
        tried: set[int] = set()
        for _ in range(2):
            engine = self.choose(key, weight, tried)
            tried.add(engine.index)
            try:
                return await attempt(engine, uuid.uuid4().hex)
            except EngineLost as exc:
                self.lost(engine, exc.__cause__ or exc, held=True)
        raise EngineLost("the engines holding this request were lost")

    async def call(self, method: str, key: int | None, weight: int, args: tuple, gone) -> tuple:
        """The engine's answer to `method(rid, *args)` (on a second engine if the first dies)."""

        async def attempt(engine: EngineState, rid: str) -> tuple:
            try:
                return await self._await(engine, getattr(engine.handle, method).remote(rid, *args), rid, gone)
            finally:
                self.done(engine, weight)

        return await self._on_two_engines(key, weight, attempt)

    async def stream(self, key: int | None, weight: int, args: tuple) -> tuple:
        """(engine, rid, the rest of its events, its first event) of an engine's chat_stream; before
        that first event the request may still move to a second engine. The engine keeps the
        request's `weight` until the caller calls done()."""

        async def attempt(engine: EngineState, rid: str) -> tuple:
            events = engine.handle.chat_stream.remote(rid, *args)
            try:
                return engine, rid, events, await (await events.__anext__())
            except Exception as exc:
                self.done(engine, weight)
                if self.died(exc):
                    raise EngineLost(_short(exc)) from exc
                raise   # a bug there: the door answers 500
            except BaseException:   # the client left before the first event: end it there too
                self.done(engine, weight)
                engine.handle.cancel.remote(rid)
                raise

        return await self._on_two_engines(key, weight, attempt)

    async def _await(self, engine: EngineState, ref, rid: str, gone) -> tuple:
        answer = asyncio.wrap_future(ref.future())
        left = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if not answer.done():   # the caller left: end its sequences there, answer nobody
            engine.handle.cancel.remote(rid)
            answer.cancel()
            return ("gone",)
        try:
            return answer.result()
        except Exception as exc:
            if self.died(exc):
                raise EngineLost(_short(exc)) from exc
            raise

    def died(self, exc: BaseException) -> bool:
        """Whether `exc` says the engine's process is gone (not a bug in what it ran)."""
        return isinstance(exc, self._ray.exceptions.RayActorError)

    # -- health ------------------------------------------------------------------------------------
    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_S):
            refs = {e.handle.status.remote(): e for e in self.engines}
            done, late = self._ray.wait(list(refs), num_returns=len(refs), timeout=STATUS_TIMEOUT_S)
            for ref in done:
                self._took_status(refs[ref], ref)
            for ref in late:
                engine = refs[ref]
                if engine.ready:
                    self.lost(engine, TimeoutError(f"no status within {STATUS_TIMEOUT_S:g} s"))

    def _took_status(self, engine: EngineState, ref) -> None:
        try:
            status = self._ray.get(ref)
        except Exception as exc:   # dead, or being replaced
            if engine.ready:
                self.lost(engine, exc)
            return
        if status["pid"] != engine.pid:   # Ray replaced it: counters start again from 0
            try:
                info = self._ray.get(engine.handle.info.remote(), timeout=STATUS_TIMEOUT_S)
            except Exception:
                return
            if info["file"]["sha256"] != self.model.get("sha256"):
                engine.lost = f"its replacement loaded another file ({info['file']['path']})"
                return
            with self._lock:
                engine.restarts += 1
                engine.status = {}
                self._took_info(engine, info)
            self.say(f"engine {engine.index} replaced on {info.get('hostname')} (pid {info['pid']}): ready")
        with self._lock:
            before = engine.status
            for name in ("prompt_tokens", "reused_tokens", "generated_tokens"):
                engine.tokens[name] += status[name] - before.get(name, 0)
            engine.status = status
            if not engine.ready:   # it answers again (a replacement with another file returned above)
                engine.ready, engine.lost = True, None


def same_file(engines: list[EngineState], spec: str | None) -> dict:
    """The model file every engine loaded (its facts), or ModelMismatch naming each node's."""
    if len({e.info["file"]["sha256"] for e in engines}) > 1:
        raise ModelMismatch(f"the nodes hold different model files for --model {spec or '(default)'}: "
                            + "; ".join(f"{e.slot.node_name}: {e.info['file']['path']} sha256 "
                                        f"{e.info['file']['sha256'][:16]}…" for e in engines))
    return engines[0].info["file"]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
