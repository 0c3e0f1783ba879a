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

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..runs.score_file import error_grade
from ..errors import InputError, UsageError
from ..judging.grading import Grade
from ..judging.records import Record, record_from_mapping
from .bridge import finish_unless_gone
from .errors import ApiError, bad_request
from .schema import parse_grade, parse_json
from .service import Service

log = logging.getLogger("prom_local.serve")
SOURCE = "request body"


def _parse(data: object) -> list[Record | Grade]:
    items = []
    for i, item in enumerate(data, 1):
        try:
            items.append(record_from_mapping(item, line=i, source=SOURCE))
        except InputError as err:
            rid = item.get("id") if isinstance(item, dict) else None
            if isinstance(rid, (str, int)) and not isinstance(rid, bool):
                err.record_id = str(rid)
            items.append(error_grade(err))
    return items


async def grade(service: Service, request: Request) -> JSONResponse:
    service.check_key(request)
    data, sampling, both_orders = parse_grade(parse_json(await service.read_body(request)))
    judge = service.require_judge()
    single = isinstance(data, dict)
    if single:
        try:
            items: list[Record | Grade] = [record_from_mapping(data, line=1, source=SOURCE)]
        except InputError as err:
            raise bad_request(str(err), param=err.field) from None
    elif isinstance(data, list):
        if not data:
            raise bad_request("Expected at least one record.")
        items = _parse(data)
    else:
        raise bad_request("Expected a record (a JSON object) or a list of records.")
    if service.config.log_requests:
        log.info("grade request: %s", json.dumps(data, ensure_ascii=False)[:4000])

    samples = _samples(request, service)
    if samples is not None:
        sampling = {**sampling, "n": samples}
    elif sampling.get("n", 1) > judge.engine.n_parallel:   # a --server client's --samples
        raise bad_request(f"sampling.n must be at most {judge.engine.n_parallel} (the server's --parallel: "
                          "each sample decodes in its own sequence).", param="sampling.n")
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

    def run() -> list[dict]:
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

    work = _in_thread(run)
    if not await finish_unless_gone(request, work, _Cancel(cancel)):
        return JSONResponse({}, status_code=499)
    rows = work.result()
    if len(rows) != len(items):  # pragma: no cover - grade_stream gives one row per item
        raise ApiError(500, "a record ended without a result", type="server_error")
    return JSONResponse(rows[0] if single else rows)


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


def _samples(request: Request, service: Service) -> int | None:
    raw = request.query_params.get("samples")
    if raw is None:
        return None
    most = service.judge.engine.n_parallel if service.judge is not None else 1
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise bad_request(f"samples must be a whole number from 1 to {most} (the server's --parallel: "
                          "each sample decodes in its own sequence).", param="samples")
    return int(raw)
