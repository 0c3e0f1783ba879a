"""Where records are graded, as one interface: the local `Judge` (engine in this process), the
`RemoteJudge` (a `prom-local serve` over HTTP) and the `RayScorer` (engines on a Ray cluster,
runs/ray/driver.py) all are a `Backend`, so `score_file` takes any of them, and `grade` and the
TUI the first two. Each honours every option of the protocol or refuses it with an error, never
ignores one: rows that come back whole (a server's, a Ray engine's) give `on_token` their whole
output; the Ray engines grade pairs in the order(s) they were loaded for and refuse the other.
All three get `grade_stream` and `grade` from judging/ordering.RowStream, over their `finished_rows`.

The CLI chooses between them in one place, cli/remote_opts.open_backend.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

from ..judging.grading import Grade
from ..judging.records import AnyRecord


@runtime_checkable
class Backend(Protocol):
    """Grades records; a context manager that frees what it holds (a model, an HTTP client)."""

    def grade_stream(self, records: Iterable[AnyRecord | Grade], *,
                     on_token: Callable[[AnyRecord, str], None] | None = None,
                     cancel: threading.Event | None = None, both_orders: bool = False,
                     ordered: bool = True) -> Iterator[Grade]:
        """One row per input item (a `Grade` in the input passes through): in input order, or
        with `ordered=False` as records finish."""
        ...

    def finished_rows(self, records: Iterable[AnyRecord | Grade], *,
                      on_token: Callable[[AnyRecord, str], None] | None = None,
                      cancel: threading.Event | None = None,
                      both_orders: bool = False) -> Iterator[tuple[int, Grade]]:
        """(input index, row) pairs as records finish."""
        ...

    def grade(self, record: AnyRecord, *, on_token: Callable[[str], None] | None = None,
              cancel: threading.Event | None = None) -> Grade:
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> "Backend":
        ...

    def __exit__(self, *exc) -> None:
        ...
