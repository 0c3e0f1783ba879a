"""POST /v1/files' body streamed to disk: never held in memory, bounded while it arrives.

The event loop only receives the body's chunks (uvicorn pauses reading a connection whose unread
body passes 64 KiB) and gathers them into pieces of FEED_BYTES; each piece goes to a worker thread
that parses the multipart form (python-multipart, the parser Starlette's own form reading uses),
writes the file part to `files/<id>.part` and counts its lines. The size, line and per-key byte
limits are checked piece by piece, so a body over any of them is refused as soon as it crosses it.
The body has the server's read deadline twice over: no chunk may take longer than
--request-read-timeout to arrive, and the whole body no longer than that plus the time a slow link
(MIN_RATE) needs for the largest allowed file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..errors import ApiError, bad_request
from ..limits import MAX_FORM_FIELD_BYTES, MAX_FORM_PARTS, MULTIPART_OVERHEAD, clean_filename

FEED_BYTES = 1 << 20          # body bytes gathered on the loop before a worker thread takes them
MIN_RATE = 1 << 20            # bytes/s a client is assumed to manage at least, for the whole-body deadline


@dataclass
class UploadBounds:
    max_bytes: int        # --batch-max-upload-mib
    max_lines: int        # --batch-max-lines
    quota_bytes: int      # what the key may still store (--batch-key-max-mib minus what it keeps)
    read_timeout: float   # --request-read-timeout


@dataclass
class Received:
    filename: str
    purpose: str | None
    bytes: int


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"The file is larger than {limit} bytes (--batch-max-upload-mib).", code="file_too_large")


def over_quota(quota: int) -> ApiError:
    return ApiError(429, f"This upload would take this key past its stored bytes ({quota >> 20} MiB left of "
                    "--batch-key-max-mib): delete files it no longer needs (DELETE /v1/files/{id}).",
                    code="key_storage_full")


def boundary_of(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise bad_request("Send the file as multipart/form-data with a boundary.", param="file")
    return boundary


async def receive(request: Request, part: Path, bounds: UploadBounds) -> Received:
    """Stream the form's file part into `part` (created here; the caller removes it on failure)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and (
            len(declared) > 15 or int(declared) > bounds.max_bytes + MULTIPART_OVERHEAD):
        raise too_large(bounds.max_bytes)
    sink = _Sink(boundary_of(request), bounds)
    await anyio.to_thread.run_sync(sink.open, part)
    try:
        await _pump(request, sink, bounds)
        await anyio.to_thread.run_sync(sink.finish)
    finally:
        await anyio.to_thread.run_sync(sink.close)
    return Received(sink.filename, sink.purpose, sink.size)


async def _pump(request: Request, sink: "_Sink", bounds: UploadBounds) -> None:
    stall = bounds.read_timeout
    whole = stall + math.ceil(bounds.max_bytes / MIN_RATE)
    deadline = time.monotonic() + whole
    chunks = request.stream().__aiter__()
    pending, held = [], 0
    while True:
        wait = min(stall, deadline - time.monotonic())
        chunk = None
        with anyio.move_on_after(max(0.0, wait)):
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = b""
        if chunk is None:
            raise ApiError(408, f"The upload stalled or came too slowly (each piece within {stall:g} s, the "
                           f"whole body within {whole:g} s; --request-read-timeout).", code="request_timeout")
        if chunk:
            pending.append(chunk)
            held += len(chunk)
        if pending and (held >= FEED_BYTES or not chunk):
            await anyio.to_thread.run_sync(sink.feed, b"".join(pending))
            pending, held = [], 0
        if not chunk:
            return


class _Sink:
    """The multipart parser and the part file, used from one worker thread at a time."""

    def __init__(self, boundary: bytes, bounds: UploadBounds):
        self.bounds = bounds
        self.filename, self.purpose = "input.jsonl", None
        self.size = self.lines = 0
        self._in_line = False            # the line being read so far holds more than whitespace
        self._handle = None
        self._parts = 0
        self._header, self._value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._kind: str | None = None    # "file", "purpose", or None (a field ignored)
        self._field = bytearray()
        self._seen_file = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done, "on_part_data": self._data, "on_part_end": self._end})

    def open(self, path: Path) -> None:
        self._handle = open(path, "wb")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except MultipartParseError as exc:
            raise bad_request(f"The upload is not a valid multipart form: {str(exc)[:200]}", param="file") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise bad_request(f"The upload is not a valid multipart form: {str(exc)[:200]}", param="file") from None
        if self._in_line:
            self._count_line()
        if not self._seen_file:
            raise bad_request("Expected the file in a multipart field named 'file'.", param="file")
        self._handle.flush()

    # -- parser callbacks (python-multipart calls them from write()) -------------------------------
    def _begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FORM_PARTS:
            raise bad_request(f"At most {MAX_FORM_PARTS} fields in the form.", param="file")
        self._headers, self._kind, self._field = {}, None, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]
        if len(self._header) > MAX_FORM_FIELD_BYTES:
            raise bad_request("A form header is too long.", param="file")

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._value) > MAX_FORM_FIELD_BYTES:
            raise bad_request("A form header is too long.", param="file")

    def _header_end(self) -> None:
        self._headers[bytes(self._header).lower()] = bytes(self._value)
        self._header, self._value = bytearray(), bytearray()

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("latin-1")
        if name == "file":
            if self._seen_file:
                raise bad_request("Send one file per upload.", param="file")
            self._seen_file, self._kind = True, "file"
            given = options.get(b"filename")
            if given:
                self.filename = clean_filename(given.decode("utf-8", "replace"))
        elif name == "purpose":
            self._kind = "purpose"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "file":
            self._file_data(data[start:end])
        else:   # a small field: purpose, or one we ignore
            self._field += data[start:end]
            if len(self._field) > MAX_FORM_FIELD_BYTES:
                raise bad_request("A form field other than the file is too long.", param="purpose")

    def _end(self) -> None:
        if self._kind == "purpose":
            self.purpose = self._field.decode("utf-8", "replace")

    # -- the file ---------------------------------------------------------------------------------
    def _file_data(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.bounds.max_bytes:
            raise too_large(self.bounds.max_bytes)
        if self.size > self.bounds.quota_bytes:
            raise over_quota(self.bounds.quota_bytes)
        self._handle.write(piece)
        *ended, rest = piece.split(b"\n")
        for segment in ended:
            if self._in_line or segment.strip():
                self._count_line()
            self._in_line = False
        self._in_line = self._in_line or bool(rest.strip())

    def _count_line(self) -> None:
        self.lines += 1
        if self.lines > self.bounds.max_lines:
            raise bad_request(f"The file has more than {self.bounds.max_lines} lines; at most "
                              f"{self.bounds.max_lines} per batch (--batch-max-lines).", param="file",
                              code="too_many_lines")
