"""Long model-store operations (pull, convert) as stages: the Reporter that shows them, the Stage
record each leaves in a report, the free-disk check before a stage writes, and hashing with progress."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DiskSpaceError
from .manifest import sha256_file
from ..units import format_bytes


class Reporter:
    """Progress sink; the CLI draws it with rich. This base class is silent (library use, tests)."""

    def note(self, text: str) -> None: ...

    def start(self, stage: str, text: str, total: float | None = None) -> None: ...

    def update(self, completed: float | None = None, *, total: float | None = None,
               text: str | None = None) -> None: ...

    def done(self, text: str) -> None: ...


@dataclass
class Stage:
    stage: str                 # download | convert | imatrix | quantize | hash | verify | cleanup
    target: str                # file (or repo) the stage is about
    status: str                # ran | skipped
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    detail: str = ""

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


human = format_bytes   # the name pull and convert import


def check_free(path: Path, needed: int, what: str) -> int:
    """Raise DiskSpaceError unless the filesystem holding `path` has `needed` bytes free."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise DiskSpaceError(f"{what} needs about {human(needed)} free in {probe}, but only {human(free)} "
                             "is free; free some space (or use --out on a bigger disk) and re-run to resume")
    return free


def hash_with_progress(path: Path, say: Reporter, stage: str, label: str | None = None) -> tuple[str, float]:
    """sha256 of `path`, shown as stage `stage` (hash, verify) with a byte-count bar.
    Returns (hex digest, seconds); the caller says what the digest meant with say.done()."""
    say.start(stage, label or path.name, total=path.stat().st_size)
    started = time.perf_counter()
    seen = 0

    def tick(n: int) -> None:
        nonlocal seen
        seen += n
        say.update(seen)

    return sha256_file(path, tick), time.perf_counter() - started
