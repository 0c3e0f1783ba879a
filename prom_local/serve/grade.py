"""POST /v1/grade: records in the JSONL shapes `score` reads, rows out exactly as `score` writes them.

One record (a JSON object) gives one row, or a 400 naming the bad field; a list gives a list of
rows in input order, with an error row for each bad record, as `score` writes for a bad line.
`{"records": ..., "sampling": {...}}` does the same with the client's sampling options (what
`score --server` sends), and "both_orders": true grades relative records A/B and B/A.
`?samples=N` (or "n" in "sampling") grades each record from N samples of one prompt computation
(as `score --samples`; default: the server's --samples). The records are graded by the library's
own `Judge.grade_stream`, in a thread of their own, on the shared engine together with everyone
else's requests: every kind of record the library grades, this endpoint grades the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from typing import Awaitable, Callable

from starlette.requests import Request

from ..judging.grades import error_row as error_grade
from ..errors import InputError, UsageError
from ..judging.grades import Grade
from ..judging.records import Record, record_from_mapping
from .bridge import disconnected, finish_unless_gone
from .errors import ApiError, ClientGone, bad_request
from .limits import MAX_ID_CHARS, query_int, text_bytes
from .schema import parse_grade
from .service import Service

log = logging.getLogger("prom_local.serve")
SOURCE = "request body"


def _parse(data: list, service: Service) -> list[Record | Grade]:
    items = []
    for i, item in enumerate(data, 1):
        try:
            items.append(_record(item, i, service))
        except InputError as err:
            rid = item.get("id") if isinstance(item, dict) else None
            if isinstance(rid, (str, int)) and not isinstance(rid, bool):
                err.record_id = str(rid)[:MAX_ID_CHARS]
            items.append(error_grade(err))
    return items


def _record(item: object, line: int, service: Service) -> Record:
    """One record, refused before any rendering or tokenizing if its text is longer in bytes than
    the longest prompt could be (no token stands for more than longest_token_bytes bytes)."""
    if isinstance(item, dict) and text_bytes(item) > service.max_prompt_bytes:
        raise InputError(f"the record's text is longer than the {service.max_prompt_tokens}-token prompt "
                         "limit could hold", source=SOURCE, line=line)
    return record_from_mapping(item, line=line, source=SOURCE)


def _items(service: Service, data: object) -> tuple[list[Record | Grade], bool]:
    """The body's record(s) -> (records and error rows, whether it was one record)."""
    if isinstance(data, dict):
        try:
            return [_record(data, 1, service)], True
        except InputError as err:
            raise bad_request(str(err), param=err.field) from None
    if not isinstance(data, list):
        raise bad_request("Expected a record (a JSON object) or a list of records.")
    if not data:
        raise bad_request("Expected at least one record.")
    if len(data) > service.max_records:   # before any record is looked at
        raise bad_request(f"At most {service.max_records} records per request (--parallel plus "
                          "--max-queue).", param="records", code="too_many_records")
    return _parse(data, service), False


async def endpoint(service: Service, caller: str, body: object, request: Request) -> dict | list:
    """POST /v1/grade behind the door (door.py): `?samples`, and the client's hanging up."""
    return await service.cores.grade(service, caller, body, samples=samples_param(request, service),
                                     gone=lambda: disconnected(request))


async def run(service: Service, caller: str, body: object, *, samples: int | None = None,
              gone: Callable[[], Awaitable[None]]) -> dict | list:
    """The core of /v1/grade, for HTTP requests and batch lines alike: a parsed, bounded body from
    `caller` -> the row (one record) or rows. Raises ApiError, or ClientGone when `gone()` ends
    before the rows do (their sequences are cancelled then)."""
    data, sampling, both_orders = parse_grade(body)
    judge = service.require_judge()
    items, single = _items(service, data)
    if service.config.log_requests:
        log.info("grade request from %s: %s", caller, json.dumps(data, ensure_ascii=False)[:4000])
    sampling = _sampling(samples, service, sampling)
    pairs = [item for item in items if getattr(item, "is_relative", False)]
    if pairs:
        try:
            judge.profile.require_relative()
        except UsageError as err:   # relative records on an absolute-only profile
            raise bad_request(str(err)) from None
    # Error rows take no sequence; a pair graded in both orders takes two; an absolute record one
    # per sample.
    n_samples = max(1, sampling.get("n", judge.sampling.n))
    n_absolute = sum(not isinstance(item, Grade) for item in items) - len(pairs)
    n_records = n_absolute * n_samples + len(pairs) * (2 if both_orders else 1)
    if n_records > service.admission.limit:
        raise bad_request(f"At most {service.admission.limit} records per request (--parallel plus --max-queue).")
    if sampling:  # this request's options: a view of the Judge on the same engine
        judge = judge.with_sampling(dataclasses.replace(judge.sampling, **sampling))
    service.admit(n_records)
    cancel = threading.Event()
    work = _in_thread(lambda: _run(service, judge, items, cancel, both_orders, n_records))
    if not await finish_unless_gone(gone(), work, _Cancel(cancel)):
        raise ClientGone()
    rows = work.result()
    if len(rows) != len(items):  # pragma: no cover - grade_stream gives one row per item
        raise ApiError(500, "a record ended without a result", type="server_error")
    return rows[0] if single else rows


def _run(service: Service, judge, items, cancel: threading.Event, both_orders: bool, n_records: int) -> list[dict]:
    try:
        rows = []
        for row_grade in judge.grade_stream(items, cancel=cancel, both_orders=both_orders):
            if row_grade.finish_reason != "error":  # not a bad record, nor one too long to run
                service.metrics.output(row_grade.prompt_tokens,
                                       int(row_grade.extra.get("reused_prompt_tokens", 0)),
                                       row_grade.completion_tokens, row_grade.finish_reason == "cancelled")
            rows.append(row_grade.to_row())
        return rows
    finally:  # only once the engine has let go of every sequence
        service.release(n_records)


def _sampling(samples: int | None, service: Service, sampling: dict) -> dict:
    """The request's sampling fields, checked against what this server can do."""
    judge = service.judge
    if samples is not None:
        sampling = {**sampling, "n": samples}
    elif sampling.get("n", 1) > judge.n_parallel:   # a --server client's --samples
        raise bad_request(f"sampling.n must be at most {judge.n_parallel} (the server's --parallel: "
                          "each sample decodes in its own sequence).", param="sampling.n")
    cap = service.config.max_tokens_cap
    if cap and sampling.get("max_tokens", 0) > cap:
        raise bad_request(f"sampling.max_tokens must be at most {cap} (the server's --max-tokens-cap).",
                          param="sampling.max_tokens")
    return sampling


class _Cancel:
    """What finish_unless_gone cancels when the client leaves: the grade_stream's cancel event."""

    def __init__(self, event: threading.Event):
        self.cancel = event.set


def _in_thread(fn) -> asyncio.Future:
    """fn() in a thread of its own (not the loop's small default pool: one grading request must
    never wait for another's to end before reaching the engine), as a future of the loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error) -> None:
        if future.done():  # the client left and the future was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone (shutting down): nobody waits for the rows
            pass

    threading.Thread(target=target, daemon=True, name="prom-local-serve-grade").start()
    return future


def samples_param(request: Request, service: Service) -> int | None:
    """`?samples=N`: each record graded from N samples (None: not given)."""
    raw = request.query_params.get("samples")
    if raw is None:
        return None
    most = service.parallel_per_engine
    try:
        return query_int(request.query_params, "samples", 1, 1, most)
    except ApiError as exc:
        exc.message += " (the server's --parallel: each sample decodes in its own sequence)"
        raise
