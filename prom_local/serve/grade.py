"""POST /v1/grade: records in the JSONL shapes `score` reads, rows out exactly as `score` writes them.

One record (a JSON object) gives one row, or a 400 naming the bad field; a list gives a list of
rows in input order, with an error row for each bad record, as `score` writes for a bad line.
The records are graded by the Judge on the shared engine, together with everyone else's requests.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..batch import error_grade
from ..engine import DoneEvent, ErrorEvent
from ..errors import InputError
from ..grading import Grade
from ..records import Record, record_from_mapping
from .bridge import finish_unless_gone
from .errors import ApiError, bad_request
from .schema import parse_json
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
    data = parse_json(await service.read_body(request))
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

    records = [(i, item) for i, item in enumerate(items) if isinstance(item, Record)]
    rows: list[dict | None] = [item.to_row() if isinstance(item, Grade) else None for item in items]
    if records:
        limit = service.admission.limit
        if len(records) > limit:
            raise bad_request(f"At most {limit} records per request (--parallel plus --max-queue).")
        requests = []
        for i, record in records:
            req = judge.record_request(record)
            req.tag = i
            requests.append(req)
        flight = service.submit(requests, tokens=False)
        by_index = dict(records)

        async def collect() -> None:
            async for _, event in flight.events():
                if isinstance(event, DoneEvent):
                    i = event.output.tag
                    rows[i] = judge.to_grade(by_index[i], event.output).to_row()
                elif isinstance(event, ErrorEvent):
                    rows[event.tag] = judge.failed_grade(by_index[event.tag], event.error).to_row()

        if not await finish_unless_gone(request, collect(), flight):
            return JSONResponse({}, status_code=499)
    if any(row is None for row in rows):  # pragma: no cover - every request ends with an event
        raise ApiError(500, "a record ended without a result", type="server_error")
    return JSONResponse(rows[0] if single else rows)
