"""Rows in completion order or in input order: the one place that reassembles input order.

A backend (the local Judge, the remote judge) finishes records in whatever order the engine or the
server does and hands out `(input index, row)` pairs as they finish. A results file takes them so:
each row is written, and made durable, the moment its record is done, so a slow first record
holds back no other row and a kill loses only the records still in flight. Callers that pair rows
with their inputs by position (stdout, the TUI, prometheus-eval's list calls, /v1/grade) put them
back in input order with `in_input_order`.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

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
