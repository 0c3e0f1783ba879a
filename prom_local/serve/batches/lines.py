"""A batch input file read into lines: each one a request to run, or that line's error.

OpenAI's input line is {"custom_id", "method", "url", "body"}. A line that cannot run (longer than
--max-body-bytes, not JSON, no custom_id, a custom_id seen before, another url than the batch's
endpoint) becomes an error of that line only; a file with no JSON object line at all is not JSONL
and fails the whole batch. Reading is deterministic, so a restarted server numbers the lines
exactly as before.

Everything here blocks (file reads, JSON parsing): the runner calls it in a worker thread. A file
is read a line at a time with a bounded readline, so a 200 MiB line costs one chunk of memory, and
a line longer than the body limit is skipped without being parsed or kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ApiError
from ..limits import loads

ENDPOINTS = ("/v1/chat/completions", "/v1/grade")
SKIP_CHUNK = 1 << 20    # an over-long line is read past in pieces of this size
TOO_LONG = None         # physical_lines' stand-in for a line over the limit


@dataclass
class Line:
    number: int                 # 1-based line number in the input file (the resume key)
    custom_id: str | None
    body: object = None         # the request body, parsed and bounded (None for an error line)
    error: dict | None = None   # {"code", "message", "line"} when the line cannot run


class NotJsonl(Exception):
    pass


def physical_lines(handle: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based number, bytes) of each line; TOO_LONG for a line of more than `limit` bytes, read
    past in SKIP_CHUNK pieces without being kept."""
    number = 0
    while True:
        raw = handle.readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
            while not raw.endswith(b"\n"):
                raw = handle.readline(SKIP_CHUNK)
                if not raw:
                    break
            yield number, TOO_LONG
            continue
        yield number, raw


def survey(path: Path, limit: int) -> int:
    """How many lines the file holds to run or fail (blank ones skipped), raising NotJsonl when
    none is a JSON object. Stops parsing at the first object found; counting goes on unparsed."""
    count, found = 0, False
    with open(path, "rb") as handle:
        for _, raw in physical_lines(handle, limit):
            if raw is TOO_LONG or raw.strip():
                count += 1
                if not found and raw is not TOO_LONG:
                    found = _is_object(raw)
    if count and not found:
        raise NotJsonl(f"{path.name} is not JSONL: no line holds a JSON object")
    return count


def _is_object(raw: bytes) -> bool:
    try:
        return isinstance(loads(raw), dict)
    except ApiError:
        return False


class LineReader:
    """The lines of one input file after `skip`'s numbers (those already done), read a few at a
    time by `take` (in a worker thread). Remembers the custom_ids seen, as short digests, so a
    repeat is caught across calls however long the ids are."""

    def __init__(self, path: Path, endpoint: str, limit: int):
        self.endpoint, self.limit = endpoint, limit
        self._handle = open(path, "rb")
        self._lines = physical_lines(self._handle, limit)
        self._seen: dict[bytes, int] = {}

    def close(self) -> None:
        self._handle.close()

    def take(self, most: int, skip: set[int] | frozenset = frozenset(), budget: int = 4 << 20) -> list[Line]:
        """Up to `most` lines not in `skip`, stopping once they hold `budget` bytes (at least one
        line; fewer at the end of the file; [] when done)."""
        out: list[Line] = []
        held = 0
        for number, raw in self._lines:
            if raw is not TOO_LONG and not raw.strip():
                continue
            line = self._parse(number, raw)
            if number not in skip:
                out.append(line)
                held += len(raw) if raw is not TOO_LONG else 0
                if len(out) >= most or held >= budget:
                    break
        return out

    def _parse(self, number: int, raw: bytes | None) -> Line:
        def fail(code: str, message: str, custom_id: str | None = None) -> Line:
            return Line(number, custom_id, error={"code": code, "message": f"line {number}: {message}",
                                                  "line": number})

        if raw is TOO_LONG:
            return fail("line_too_large", f"the line is longer than {self.limit} bytes (--max-body-bytes)")
        try:   # the same bounds as a request body (depth, numbers, text): a line is a request
            data = loads(raw)
        except ApiError as exc:
            return fail("invalid_json", exc.message)
        if not isinstance(data, dict):
            return fail("invalid_json", "a line must be a JSON object")
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return fail("missing_custom_id", "'custom_id' must be a non-empty string")
        key = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=16).digest()
        if key in self._seen:
            return fail("duplicate_custom_id", f"custom_id {_short(custom_id)!r} was already used on line "
                        f"{self._seen[key]}", custom_id)
        self._seen[key] = number
        if data.get("method", "POST") != "POST":
            return fail("invalid_method", f"method must be POST, not {_short(data.get('method'))!r}", custom_id)
        if data.get("url") != self.endpoint:
            return fail("invalid_url", f"url {_short(data.get('url'))!r} is not this batch's endpoint "
                        f"{self.endpoint!r}", custom_id)
        if "body" not in data:
            return fail("missing_body", "'body' is missing", custom_id)
        return Line(number, custom_id, body=data["body"])


def _short(value: object) -> object:
    return value[:200] if isinstance(value, str) else value

