"""What grades records, as one interface: a `Backend`. The local `Judge` (judge.py, the engine
in this process), the `RemoteJudge` (backends/remote.py, a `prom-local serve` over HTTP) and the
`RayScorer` (backends/ray/driver.py, engines on a Ray cluster) all are one, so `score_file` takes
any of them, and `grade` and the TUI the first two; backends/choose.py is the one place that
picks one. Each honours every option of the protocol or refuses it with an error, never ignores
one: rows that come back whole (a server's, a Ray engine's) give `on_token` their whole output;
the Ray engines grade pairs in the order(s) they were loaded for and refuse the other.

Rows in completion order or in input order: a backend finishes records in whatever order the
engine or the server does and hands out `(input index, row)` pairs as they finish
(`finished_rows`). A results file takes them so: each row is written, and made durable, the
moment its record is done, so a slow first record holds back no other row and a kill loses only
the records still in flight. Callers that pair rows with their inputs by position (stdout, the
TUI, prometheus-eval's list calls, /v1/grade) put them back in input order with
`in_input_order`. `RowStream` gives every backend its `grade_stream` and `grade` from its
`finished_rows`, so that reassembly is written once.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

from .grades import Grade, error_row
from .records import AnyRecord

Row = TypeVar("Row")


def in_input_order(finished: Iterable[tuple[int, Row]]) -> Iterator[Row]:
    """`finished` (input index, row) pairs, any order, indexes 0..n-1 each once -> the rows in
    input order, each as soon as every row before it is out. If `finished` raises, the rows that
    did finish are still yielded (in input order) before the error: resume skips them next time."""
    done: dict[int, Row] = {}
    next_out = 0
    try:
        for i, row in finished:
            done[i] = row
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    except Exception:
        for i in sorted(done):
            yield done.pop(i)
        raise
    for i in sorted(done):   # gaps: records cut off (cancelled) before they finished
        yield done.pop(i)


def rows_only(finished: Iterable[tuple[int, Row]]) -> Iterator[Row]:
    """The rows of `finished`, in the order they finished."""
    for _i, row in finished:
        yield row


class RowStream:
    """`grade_stream` and `grade` for a Backend that defines `finished_rows` (the local Judge,
    RemoteJudge, RayScorer): the reassembly into input order is written here once."""

    def finished_rows(self, records: Iterable[AnyRecord | Grade], *,
                      on_token: Callable[[AnyRecord, str], None] | None = None,
                      cancel: threading.Event | None = None,
                      both_orders: bool = False) -> Iterator[tuple[int, Grade]]:
        raise NotImplementedError

    def grade_stream(self, records: Iterable[AnyRecord | Grade], *,
                     on_token: Callable[[AnyRecord, str], None] | None = None,
                     cancel: threading.Event | None = None, both_orders: bool = False,
                     ordered: bool = True) -> Iterator[Grade]:
        """One row per input item (a `Grade` in the input, an error row made upstream, passes
        through): in input order, or with `ordered=False` each as soon as its record is done (a
        results file's order). `both_orders`: pairs are graded A/B and B/A (judging/pairwise.py)."""
        finished = self.finished_rows(records, on_token=on_token, cancel=cancel, both_orders=both_orders)
        return in_input_order(finished) if ordered else rows_only(finished)

    def grade(self, record: AnyRecord, *, on_token: Callable[[str], None] | None = None,
              cancel: threading.Event | None = None) -> Grade:
        """One record's row (its cancelled row when `cancel` stopped it before any row came)."""
        cb = (lambda _r, text: on_token(text)) if on_token else None
        row = next(iter(self.grade_stream([record], on_token=cb, cancel=cancel)), None)
        return row if row is not None else error_row("cancelled", record, finish_reason="cancelled")


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
