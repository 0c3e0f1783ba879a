"""Joining a Ray cluster, deciding where `score --ray` puts its engines, and how records are cut
into chunks for them.

Split from driver.py (the run itself) because this part never reads or writes results: it is about
the cluster (is Ray there, which address, which node gets how many engines and CPUs, which records
travel together), and `plan_actors` and `group_chunks` are pure, so they are tested without one.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ...errors import ClusterError
from ...judging.grades import Grade
from ...judging.records import Record

# A local instance started by `--ray auto` keeps records and grades only (kilobytes each).
LOCAL_OBJECT_STORE_BYTES = 128 << 20


@dataclass
class ActorSlot:
    """One engine actor as the driver sees it."""

    index: int
    node_id: str
    node_name: str
    num_cpus: float
    num_gpus: float
    threads: int | None
    handle: object = None
    info: dict = field(default_factory=dict)
    engine: dict = field(default_factory=dict)
    inflight: dict[str, Record] = field(default_factory=dict)   # sent, not written yet
    queued: int = 0          # of those, not yet taken by the engine (as of its last answer)
    call: object = None
    graded: int = 0
    lost: str | None = None

    @property
    def alive(self) -> bool:
        return self.lost is None

    @property
    def where(self) -> str:
        return f"node {self.node_name} ({self.node_id[:8]})"

# ----------------------------------------------------------------------------------------------
# Connecting.

def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray, which is not installed: pip install 'prom-local[ray]' "
                           "(or pip install 'ray[default]')") from None
    return ray


def _shipped_packages() -> list[str]:
    """This process's prom_local, sent to every node so that actors run exactly the driver's code,
    whatever is installed there (the library alone: it does not import `convert`). The folder is
    found from this file (prom_local/backends/ray/cluster.py), not by importing the package's top."""
    return [str(Path(__file__).resolve().parents[2])]


def _local_start_wanted(address: str) -> bool:
    """True when `address` means "no cluster to join": `local`, or `auto` with no RAY_ADDRESS and no
    cluster started here with `ray start`."""
    if address == "local":
        return True
    if address != "auto":
        return False
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # Ray moved it: let ray.init decide, with its defaults
        return False
    try:
        return canonicalize_bootstrap_address(None) is None
    except Exception:
        return False


def connect(address: str = "auto", *, verbose: bool = False) -> str:
    """Join the cluster at `address` (or start a local instance) and return where we are."""
    ray = import_ray()
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    runtime_env = {"py_modules": _shipped_packages(), "excludes": ["__pycache__", "*.pyc"]}
    common = dict(runtime_env=runtime_env, namespace="prom-local", log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.WARNING,
                  configure_logging=True)
    try:
        if _local_start_wanted(address):
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
        else:
            ray.init(address=None if address == "auto" else address, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                " (if the cluster uses token authentication, set RAY_AUTH_MODE=token here too, with its "
                "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise ClusterError(f"--ray {address}: could not join a Ray cluster: {exc}{hint}") from None
    return ray.get_runtime_context().gcs_address


# ----------------------------------------------------------------------------------------------
# Placing engines on nodes.

def plan_actors(nodes: list[dict], n_actors: int | None, *, use_gpus: bool,
                threads: int | None = None) -> list[ActorSlot]:
    """Which node each engine goes on and what it asks Ray for (`nodes` as `ray.nodes()` gives them).

    GPU nodes: one engine per GPU by default, each asking for one GPU. CPU-only: one engine per node
    by default; with --actors N, engines go to nodes in proportion to their CPUs, and the engines on a
    node split its CPUs (Ray's count for the node, which is what its owner gave Ray) between them,
    as Ray resources and as llama.cpp threads.
    """
    key = "GPU" if use_gpus else "CPU"
    capacity = {n["NodeID"]: float(n.get("Resources", {}).get(key, 0)) for n in nodes if n.get("Alive")}
    usable = [n for n in nodes if capacity.get(n["NodeID"], 0) >= (1 if use_gpus else 0.01)]
    if not usable:
        raise ClusterError(f"no live Ray node offers {'GPUs' if use_gpus else 'CPUs'} for an engine")
    gpus = sum(int(capacity[n["NodeID"]]) for n in usable)
    if use_gpus and (n_actors or 0) > gpus:
        raise ClusterError(f"--actors {n_actors}: the cluster has only {gpus} GPUs (one engine per GPU)")
    assigned = {n["NodeID"]: 0 for n in usable}
    if n_actors is None and not use_gpus:
        assigned = dict.fromkeys(assigned, 1)  # one engine per node
    else:
        for _ in range(gpus if n_actors is None else n_actors):
            if use_gpus:  # the node with the most free GPUs
                node = max((n for n in usable if assigned[n["NodeID"]] < int(capacity[n["NodeID"]])),
                           key=lambda n: capacity[n["NodeID"]] - assigned[n["NodeID"]])
            else:  # the node whose CPUs per engine stay highest
                node = max(usable, key=lambda n: capacity[n["NodeID"]] / (assigned[n["NodeID"]] + 1))
            assigned[node["NodeID"]] += 1
    order = [n for n in usable for _ in range(assigned[n["NodeID"]])]
    slots = []
    for i, node in enumerate(order):
        nid = node["NodeID"]
        share = float(node.get("Resources", {}).get("CPU", 0)) / assigned[nid]
        name = node.get("NodeName") or node.get("NodeManagerAddress") or nid[:8]
        n_threads = threads or max(1, int(share))
        if use_gpus:
            slots.append(ActorSlot(i, nid, name, num_cpus=0, num_gpus=1, threads=n_threads))
        else:
            # Floored to 1/100 so that the shares of one node always fit in it.
            slots.append(ActorSlot(i, nid, name, num_cpus=max(0.01, int(share * 100) / 100), num_gpus=0,
                                   threads=n_threads))
    return slots


# ----------------------------------------------------------------------------------------------
# Chunking: records that share an instruction travel together, so the engine that gets them can
# reuse the instruction's KV prefix (the engine copies a cached prefix between its sequences).

def group_chunks(records: Iterable[Record], chunk_size: int) -> Iterator[list[Record]]:
    """Chunks of about `chunk_size` records, each instruction's records kept together and in input
    order; a group larger than a chunk fills consecutive chunks."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.instruction, []).append(record)
    chunk: list[Record] = []
    for group in groups.values():
        # A group that would overflow a chunk already half full starts the next one instead.
        if chunk and len(chunk) + len(group) > chunk_size and len(chunk) >= max(1, chunk_size // 2):
            yield chunk
            chunk = []
        for record in group:
            chunk.append(record)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class ReadAhead:
    """The input of a Ray run, read a window at a time into chunks (group_chunks) for the engines:
    `queue` holds the chunks not sent yet, `passed` the input's ready-made rows (bad lines, with
    their input index) to hand out at once, and `index_of` where each record in flight came from.
    `check` refuses a record before it is queued (a pair on a profile without a pairwise prompt)."""

    def __init__(self, records: Iterable[Record | Grade], window: int, chunk_size: int,
                 check=lambda record: None):
        self.source = enumerate(records)
        self.window, self.chunk_size, self.check = window, chunk_size, check
        self.queue: collections.deque[list[Record]] = collections.deque()
        self.passed: list[tuple[int, Grade]] = []
        # A list per id, as an id may repeat in the input.
        self.index_of: dict[str, list[int]] = collections.defaultdict(list)
        self.exhausted = False

    def refill(self, live_engines: int) -> None:
        """Read up to a window more (nothing once the input is exhausted)."""
        batch: list[Record] = []
        while not self.exhausted and len(batch) < self.window:
            i, item = next(self.source, (None, None))
            if item is None:
                self.exhausted = True
            elif isinstance(item, Grade):  # a bad input line: its error row, at once
                self.passed.append((i, item))
            else:
                self.check(item)
                self.index_of[item.id].append(i)
                batch.append(item)
        size = self.chunk_size
        if self.exhausted:
            # The input's last records: smaller chunks, so that every engine gets a share.
            size = max(1, min(size, -(-len(batch) // (2 * max(1, live_engines)))))
        self.queue.extend(group_chunks(batch, size))

    def take_passed(self) -> list[tuple[int, Grade]]:
        rows, self.passed = self.passed, []
        return rows

    @property
    def done(self) -> bool:
        return self.exhausted and not self.queue
