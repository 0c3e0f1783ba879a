"""Score a JSONL file into a results file: skip what is done, grade the rest, survive kills.

Resume is by record id: rows already in the output are never redone, a torn last line is cut
off and its record redone, so re-running the same command after a crash or `kill -9` ends with
exactly one row per input record.

A results file gets each row (written and fsynced) as soon as its record is done, in the order
records finish: a slow record holds back no other, and a kill loses only what was in flight.
Stdout (`-o -`) keeps input order, since a reader of a pipe has no resume and may pair rows with
input lines; it waits for the slowest record before each later one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import InputError
from ..judging.grades import Grade, error_row
from ..judging.records import AnyRecord
from ..inputs import read_records
from ..judging.backend import Backend
from .results_sink import ResultsSink, RunStats


def default_output(input_path: str | Path) -> str:
    """Where `score` (and the TUI) write results for an input unless told: INPUT.prom.jsonl."""
    if str(input_path) == "-":
        return "-"
    p = Path(input_path)
    # Benchmark files are .json (benchmark_files.py): vicuna_eval.json -> vicuna_eval.prom.jsonl;
    # KUDGE's are .csv (kudge_files.py).
    stem = next((p.name.removesuffix(x) for x in (".jsonl", ".json", ".csv") if p.name.endswith(x)), p.name)
    return str(p.with_name(stem + ".prom.jsonl"))


def duplicate_row_id(record_id: str, line: int | None) -> str:
    """The id of the error row written for a repeated id, so it resumes like any other row."""
    return f"{record_id}@line{line}"


def unique_ids(items: Iterable[AnyRecord | InputError], source: str | Path) -> Iterator[AnyRecord | InputError]:
    """`items` (read_records') with every record whose id came before made that line's InputError,
    known by duplicate_row_id. Ids are the resume key and a batch's custom_ids: a repeated id would
    make the output ambiguous. `score` writes the error row and `batch submit` sends the line as
    one, so a repeated id means the same in both: that line's error row, the rest graded."""
    first_line: dict[str, int] = {}
    name = str(source) if str(source) != "-" else "<stdin>"
    for item in items:
        if isinstance(item, InputError):
            yield item
        elif item.id in first_line:
            err = InputError(f"duplicate id {item.id!r} (first on line {first_line[item.id]})",
                             source=name, line=item.line, field="id")
            err.record_id = duplicate_row_id(item.id, item.line)
            yield err
        else:
            first_line[item.id] = item.line or 0
            yield item


def pending_items(input_path: str | Path, done_ids: set[str], stats: RunStats,
                  cancel: threading.Event | None = None) -> Iterator[AnyRecord | Grade]:
    """Records still to grade, and error rows for bad lines, in input order."""
    for item in unique_ids(read_records(input_path), input_path):
        if cancel is not None and cancel.is_set():
            return
        stats.total_seen += 1
        if (item.record_id if isinstance(item, InputError) else item.id) in done_ids:
            stats.skipped += 1
        elif isinstance(item, InputError):
            yield error_row(item)
        else:
            yield item


def score_file(judge: Backend, input_path: str | Path, output: str | Path | ResultsSink, *,
               on_result: Callable[[Grade, RunStats], None] | None = None,
               on_token: Callable[[AnyRecord, str], None] | None = None,
               retry_errors: bool = False,
               cancel: threading.Event | None = None, both_orders: bool = False) -> RunStats:
    """Grade what the results file does not hold yet. `output` is a path (opened, locked and
    closed here) or a ResultsSink the caller already holds open. Setting `cancel` stops the run
    between decode steps; records cut off are not written, so the next run grades them again.

    A file may mix absolute and relative (response_A/response_B) records: each is graded by its
    kind and its row says which (relative rows carry "mode": "relative"). `both_orders` grades
    the relative ones A/B and B/A (judging/pairwise.py)."""
    if not isinstance(output, ResultsSink):
        with ResultsSink(output, retry_errors=retry_errors) as sink:
            return score_file(judge, input_path, sink, on_result=on_result, on_token=on_token, cancel=cancel,
                              both_orders=both_orders)
    sink = output
    items = pending_items(input_path, sink.done_ids, sink.stats, cancel)
    in_order = sink.path is None   # stdout
    for grade in judge.grade_stream(items, on_token=on_token, cancel=cancel, both_orders=both_orders,
                                    ordered=in_order):
        if grade.finish_reason == "cancelled":
            continue
        sink.write(grade)
        if on_result is not None:
            on_result(grade, sink.stats)
    return sink.stats
