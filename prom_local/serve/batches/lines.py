"""A batch input file read into lines: each one a request to run, or that line's error.

OpenAI's input line is {"custom_id", "method", "url", "body"}. A line that cannot run (not JSON,
no custom_id, a custom_id seen before, another url than the batch's endpoint) becomes an error of
that line only; a file with no JSON object line at all is not JSONL and fails the whole batch.
Reading is deterministic, so a restarted server numbers the lines exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ApiError
from ..limits import loads

ENDPOINTS = ("/v1/chat/completions", "/v1/grade")


@dataclass
class Line:
    number: int                 # 1-based line number in the input file (the resume key)
    custom_id: str | None
    body: bytes | None = None   # the request body, re-encoded (None for an error line)
    error: dict | None = None   # {"code", "message", "line"} when the line cannot run


class NotJsonl(Exception):
    pass


def read_lines(path: Path, endpoint: str) -> list[Line]:
    lines: list[Line] = []
    seen: dict[str, int] = {}
    objects = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            line = _parse(number, raw, endpoint, seen)
            objects += line.error is None or line.error["code"] != "invalid_json"
            lines.append(line)
    if lines and not objects:
        raise NotJsonl(f"{path.name} is not JSONL: no line holds a JSON object")
    return lines


def _parse(number: int, raw: bytes, endpoint: str, seen: dict[str, int]) -> Line:
    def fail(code: str, message: str, custom_id: str | None = None) -> Line:
        return Line(number, custom_id, error={"code": code, "message": f"line {number}: {message}",
                                              "line": number})

    try:   # the same bounds as a request body (depth, numbers, text): a line is a request
        data = loads(raw)
    except ApiError as exc:
        return fail("invalid_json", exc.message)
    if not isinstance(data, dict):
        return fail("invalid_json", "a line must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return fail("missing_custom_id", "'custom_id' must be a non-empty string")
    if custom_id in seen:
        return fail("duplicate_custom_id", f"custom_id {custom_id!r} was already used on line {seen[custom_id]}",
                    custom_id)
    seen[custom_id] = number
    if data.get("method", "POST") != "POST":
        return fail("invalid_method", f"method must be POST, not {data.get('method')!r}", custom_id)
    if data.get("url") != endpoint:
        return fail("invalid_url", f"url {data.get('url')!r} is not this batch's endpoint {endpoint!r}", custom_id)
    if "body" not in data:
        return fail("missing_body", "'body' is missing", custom_id)
    body = json.dumps(data["body"], ensure_ascii=False).encode()
    return Line(number, custom_id, body=body)


def count_lines(data: bytes) -> int:
    return sum(1 for raw in data.splitlines() if raw.strip())
