"""`prom-local score --ray`: one scoring run spread over the llama.cpp engines of a Ray cluster.

The unit of work is one engine (one GGUF open, its own `--parallel` slots) in one Ray actor: a GPU
per actor where nodes have GPUs, else a share of a node's CPUs. The driver (the process running
`score`) is the only writer of the results file, through the same ResultsSink as a local run: it
holds the file's lock, skips ids already there, cuts a torn last line, and appends each row with
fsync the moment it arrives.
So a killed driver resumes by re-running, and a lost actor costs only its in-flight records, which
go back to the queue for the other actors: every record is written exactly once.

Before any record is sent, every node resolves the model itself (a store name from its own store,
pulled if missing; or a path, which must then exist on every node) and hashes the file; different
files on different nodes stop the run.

Only imported when `--ray` is given; Ray is an optional extra.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ...runs.score_file import score_file
from ...engine import EngineConfig, SamplingParams
from ...errors import (ClusterError, IntegrityError, ModelLoadError, ModelMismatch, ModelNotFound,
                     PromLocalError, UsageError)
from ...judging.grades import Grade
from ...judging.backend import RowStream
from ...judging.prompts import get_profile
from ...judging.records import Record
from .cluster import ActorSlot, ReadAhead, connect, import_ray, plan_actors
from .worker import EngineWorker
from ...runs.results_sink import RunStats, ResultsSink
from ...settings import ray_placement_timeout_s

# Longest one exchange call waits inside the actor for a first result before it returns empty.
EXCHANGE_WAIT_S = 1.0

_ERRORS: dict[str, type[PromLocalError]] = {c.__name__: c for c in (
    ModelNotFound, ModelLoadError, ModelMismatch, IntegrityError, ClusterError)}


@dataclass
class JudgeSpec:
    """What every actor builds its Judge from; the model is resolved on each node, not here."""

    model: str | None = None            # store name (name or name:QUANT) or a GGUF path
    models_dir: str | None = None       # None: each node's own default store
    profile: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    allow_pull: bool = True
    both_orders: bool = False           # relative records graded A/B and B/A (judging/pairwise.py)


@dataclass
class RayRun:
    stats: RunStats
    actors: list[ActorSlot]
    requeued: int
    model: dict
    address: str
    setup_seconds: float
    grading_seconds: float


def _raise_user_error(result: dict, where: str) -> None:
    exc = _ERRORS.get(result["error"], ClusterError)(f"{where}: {result['message']}")
    exc.exit_code = result.get("exit_code", exc.exit_code)  # e.g. a failed pull's own code
    raise exc


# ----------------------------------------------------------------------------------------------
# The run.

class RayScorer(RowStream):
    """Engines on a Ray cluster as a judging.backend.Backend: runs.score_file drives it as it drives
    a local Judge or a RemoteJudge.

    >>> with RayScorer(JudgeSpec(model="prometheus-ko:Q4_K_M"), address="auto") as scorer:
    ...     run = scorer.score_file("in.jsonl", "out.jsonl")
    """

    def __init__(self, spec: JudgeSpec, *, address: str = "auto", actors: int | None = None,
                 chunk_size: int | None = None, on_status: Callable[[str], None] | None = None):
        if actors is not None and actors < 1:
            raise ClusterError("--actors must be at least 1")
        self.spec = spec
        self.address = address
        self.n_actors = actors
        # None (--parallel auto): each engine picks from its own free memory; the chunk size then
        # follows the smallest choice once the engines have loaded (see _load_engines).
        self.n_parallel = max(1, spec.engine.n_parallel) if spec.engine.n_parallel else None
        self._chunk_size = chunk_size
        self.chunk_size = chunk_size or max(8, 2 * (self.n_parallel or 1))
        self.say = on_status or (lambda message: None)
        self.actors: list[ActorSlot] = []
        self.model: dict = {}
        self.connected_to = ""
        self.setup_seconds = 0.0
        self._ray = None
        self._on_node: dict[str, dict] = {}
        self._owns_connection = False
        self.requeued = 0           # records put back in the queue from lost engines

    # -- start-up -------------------------------------------------------------------------------
    def start(self) -> "RayScorer":
        started = time.perf_counter()
        ray = self._ray = import_ray()
        self._owns_connection = not ray.is_initialized()
        self.connected_to = connect(self.address, verbose=self.spec.engine.verbose)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        use_gpus = (self.spec.engine.gpu_layers != 0
                    and any(n.get("Resources", {}).get("GPU", 0) >= 1 for n in nodes))
        self.actors = plan_actors(nodes, self.n_actors, use_gpus=use_gpus,
                                  threads=self.spec.engine.n_threads)
        self.say(f"ray: {self.connected_to}, {len(nodes)} node(s); {len(self.actors)} engine(s) on "
                 + ", ".join(sorted({a.node_name for a in self.actors}))
                 + (" (one GPU each)" if use_gpus else ""))
        self._create_actors()
        self._check_model()
        self._load_engines()
        self.setup_seconds = time.perf_counter() - started
        return self

    def _create_actors(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        remote_cls = ray.remote(EngineWorker)
        for slot in self.actors:
            slot.handle = remote_cls.options(
                num_cpus=slot.num_cpus, num_gpus=slot.num_gpus, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
            ).remote()
        refs = {slot.handle.node_info.remote(): slot for slot in self.actors}
        placement_timeout = ray_placement_timeout_s()
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=placement_timeout)
        if waiting:
            late = sorted({refs[r].where for r in waiting})
            raise ClusterError(f"no engine could start on {', '.join(late)} within "
                               f"{placement_timeout:.0f} s: are its resources taken by other Ray work? "
                               f"(each engine asks for {refs[waiting[0]].num_gpus:g} GPU, "
                               f"{refs[waiting[0]].num_cpus:g} CPU)")
        for ref in ready:
            try:
                refs[ref].info = ray.get(ref)
            except Exception as exc:
                raise ClusterError(f"the engine actor on {refs[ref].where} did not start: {exc}") from None

    def _check_model(self) -> None:
        """Resolve and hash the model once per node, and refuse a cluster that disagrees."""
        first_on_node: dict[str, ActorSlot] = {}
        for slot in self.actors:
            first_on_node.setdefault(slot.node_id, slot)
        self.say(f"checking the model on {len(first_on_node)} node(s) (sha256)")
        refs = {slot.handle.prepare_model.remote(self.spec.model, self.spec.models_dir,
                                                 self.spec.allow_pull): slot
                for slot in first_on_node.values()}
        found: dict[str, dict] = {}
        for ref, slot in refs.items():
            result = self._get(ref, slot, "checking the model")
            if "error" in result:
                _raise_user_error(result, f"on {slot.where}")
            if "manifest_sha256" in result:
                raise IntegrityError(f"on {slot.where}: {result['path']} has sha256 {result['sha256']}, but "
                                    f"its manifest says {result['manifest_sha256']}: the file is damaged or "
                                    "was replaced; pull or copy it again")
            if result["pulled"]:
                self.say(f"pulled {self.spec.model} on {slot.where}")
            found[slot.node_id] = result
        digests = {r["sha256"] for r in found.values()}
        profiles = {self.spec.profile or r["profile"] for r in found.values()}
        if len(digests) > 1 or len(profiles) > 1:
            lines = [f"  {first_on_node[nid].where}: {r['path']}  sha256 {r['sha256'][:16]}…  "
                     f"{r['size']:,} bytes  profile {self.spec.profile or r['profile']}"
                     for nid, r in found.items()]
            what = "different model files" if len(digests) > 1 else "different prompt profiles"
            raise ModelMismatch(f"the nodes hold {what} for --model {self.spec.model or '(default)'}; "
                                "every node must grade with the same file. Nothing was graded.\n"
                                + "\n".join(lines))
        self._on_node = found
        self.model = {**next(iter(found.values())), "profile": profiles.pop(),
                      "paths": {first_on_node[nid].where: r["path"] for nid, r in found.items()}}

    def _get(self, ref, slot: ActorSlot, doing: str):
        try:
            return self._ray.get(ref)
        except Exception as exc:  # the actor process died (e.g. llama.cpp crashed), or a bug there
            raise ClusterError(f"the engine on {slot.where} failed while {doing}: {_short(exc)}") from None

    def _load_engines(self) -> None:
        refs = {}
        for slot in self.actors:
            engine = dataclasses.replace(self.spec.engine, n_threads=slot.threads)
            path = self._on_node[slot.node_id]["path"]
            refs[slot.handle.load.remote(path, self.model["profile"], engine, self.spec.sampling,
                                         self.spec.both_orders)] = slot
        for ref, slot in refs.items():
            result = self._get(ref, slot, "loading the model")
            if "error" in result:
                _raise_user_error(result, f"on {slot.where}")
            slot.engine = result
        if self.n_parallel is None:
            self.n_parallel = min(max(1, int(slot.engine.get("n_parallel") or 1)) for slot in self.actors)
            self.chunk_size = self._chunk_size or max(8, 2 * self.n_parallel)
        self.say(f"model: {self.model['name'] or self.model['path']} sha256 {self.model['sha256'][:12]}…, "
                 f"{len(self.actors)} engine(s) loaded")

    # -- scoring --------------------------------------------------------------------------------
    def score_file(self, input_path: str | Path, output: str | Path | ResultsSink, *,
                   on_result: Callable[[Grade, RunStats], None] | None = None,
                   retry_errors: bool = False) -> RayRun:
        """runs.score_file over these engines (`output`: a path, or a ResultsSink the caller holds
        open), with the engines' account."""
        if self._ray is None:
            self.start()
        started = time.perf_counter()
        stats = score_file(self, input_path, output, on_result=on_result, retry_errors=retry_errors,
                           both_orders=self.spec.both_orders)
        return RayRun(stats=stats, actors=self.actors, requeued=self.requeued, model=self.model,
                      address=self.connected_to, setup_seconds=self.setup_seconds,
                      grading_seconds=time.perf_counter() - started)

    # -- the Backend protocol (judging/backend.py) ------------------------------------------------
    # Rows come back whole from the engines: `on_token` gets each record's whole output once its
    # row is back (as from a server); `cancel` stops the run between exchanges (rows in flight are
    # not handed out, so the next run grades them again); `both_orders` is the JudgeSpec's, fixed
    # when the engines loaded, and another value is refused.
    def finished_rows(self, records: Iterable[Record | Grade], *,
                      on_token: Callable[[Record, str], None] | None = None,
                      cancel: threading.Event | None = None,
                      both_orders: bool = False) -> Iterator[tuple[int, Grade]]:
        """(input index, row) as the engines finish them; an error row in the input at once."""
        if both_orders != self.spec.both_orders:
            raise UsageError(f"these Ray engines grade pairs {_orders(self.spec.both_orders)}, fixed when they "
                             f"loaded (JudgeSpec.both_orders): they cannot grade {_orders(both_orders)}")
        if self._ray is None:
            self.start()
        # A relative record on a profile without a pairwise prompt stops the run here, as a local
        # run stops (the rows written so far kept), not in every engine it would be sent to.
        profile = get_profile(self.model["profile"])
        # Read ahead far enough to find records that share an instruction, not the whole file.
        intake = ReadAhead(records, window=max(256, 4 * self.chunk_size * len(self.actors)),
                           chunk_size=self.chunk_size, check=lambda record: record.require_prompt(profile))
        calls: dict[object, ActorSlot] = {}
        while cancel is None or not cancel.is_set():
            yield from intake.take_passed()
            live = self._live()
            self._top_up([a for a in live if a.call is None], intake.queue,
                         lambda: intake.refill(len(self._live())), calls)
            if not calls:
                if intake.done:
                    yield from intake.take_passed()
                    return
                continue
            for record, grade in self._collect(calls, intake.queue):
                if on_token is not None and grade.output:
                    on_token(record, grade.output)
                yield intake.index_of[grade.id].pop(0), grade

    def _live(self) -> list[ActorSlot]:
        """The engines still in the run; a ClusterError once every one is lost."""
        live = [a for a in self.actors if a.alive]
        if not live:
            reasons = "; ".join(f"{a.where}: {a.lost}" for a in self.actors)
            raise ClusterError(f"every engine was lost ({reasons}). The rows written so far are "
                               "kept: re-run the same command to grade the rest.")
        return live

    def _collect(self, calls: dict[object, ActorSlot], queue: collections.deque) -> Iterator[tuple[Record, Grade]]:
        """(record, row) for what the next exchange calls to answer bring back; a lost engine's
        records go back to the front of `queue`."""
        ready, _ = self._ray.wait(list(calls), num_returns=1, timeout=EXCHANGE_WAIT_S * 5)
        for ref in ready:
            slot = calls.pop(ref)
            slot.call = None
            try:
                grades, slot.queued = self._ray.get(ref)
            except Exception as exc:  # the actor died, or its engine failed
                self.requeued += self._lose(slot, exc, queue)
                continue
            for grade in grades:
                record = slot.inflight.pop(grade.id, None)
                if record is None:
                    continue  # not ours to write (cannot happen; never write twice)
                slot.graded += 1
                yield record, grade

    def _top_up(self, idle: list[ActorSlot], queue: collections.deque, refill: Callable[[], None],
                calls: dict[object, ActorSlot]) -> None:
        """Top up every engine that has no call in flight, one chunk each in turn, until a
        chunk's worth waits in its queue. Counted by what the engine has not yet taken, not by
        what it has not yet returned: it returns in its own input order, so finished records can
        wait behind a long one, and its slots must not run dry. `refill` reads more input into
        `queue` (nothing once the input is exhausted); each call sent goes into `calls`."""
        sending: dict[int, list[Record]] = {a.index: [] for a in idle}
        more = True
        while more:
            more = False
            for slot in idle:
                if slot.queued + len(sending[slot.index]) >= self.chunk_size:
                    continue
                if not queue:
                    refill()
                if not queue:
                    break
                sending[slot.index].extend(queue.popleft())
                more = True
        for slot in idle:
            batch = sending[slot.index]
            slot.inflight.update((r.id, r) for r in batch)
            slot.queued += len(batch)
            if not slot.inflight:
                continue  # nothing left for it
            slot.call = slot.handle.exchange.remote(batch, EXCHANGE_WAIT_S)
            calls[slot.call] = slot

    def _lose(self, slot: ActorSlot, exc: BaseException, queue: collections.deque) -> int:
        """Take an actor out of the run and put its unfinished records back at the front."""
        slot.lost = _short(exc)
        back = list(slot.inflight.values())
        slot.inflight.clear()
        if back:
            queue.appendleft(back)
        self.say(f"lost the engine on {slot.where} ({slot.lost}); {len(back)} record(s) go to the others")
        try:
            self._ray.kill(slot.handle, no_restart=True)
        except Exception:
            pass
        return len(back)

    # -- shutdown -------------------------------------------------------------------------------
    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for slot in self.actors:
            if slot.handle is not None and slot.alive:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:
                    pass
        # A local instance we started goes down with this; on a shared cluster this only
        # disconnects (and Ray frees our actors, which belong to this job). A connection the
        # caller made stays theirs.
        if self._owns_connection:
            ray.shutdown()
        self._ray = None

    def __enter__(self) -> "RayScorer":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and self.actors:   # the run's account, once it went through
            self.say(self.account())
        self.close()

    def account(self) -> str:
        """Rows per engine, and what lost engines handed back."""
        return ("engines: " + ", ".join(f"{a.where} {a.graded}" + (" (lost)" if a.lost else "")
                                         for a in self.actors)
                + (f"; {self.requeued} record(s) re-queued from lost engines" if self.requeued else ""))


def _orders(both: bool) -> str:
    return "in both orders (--both-orders)" if both else "in one order"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    last = next((line for line in reversed(text) if line.strip()), "")
    return f"{name}: {last[:200]}" if last else name

