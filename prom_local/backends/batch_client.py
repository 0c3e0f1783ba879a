"""The client side of the server's Batch API, for `prom-local batch ...`.

`lines_for_records` turns the records `score` reads into /v1/grade batch lines (each record's id
is its custom_id, its body the JSON object it came from, as `score --server` sends it);
`rows_from_results` turns a finished batch's output and error files back into the rows `score`
writes, in input order (a line's id carries its line number). The HTTP calls are OpenAI's
/v1/files and /v1/batches; failures are RemoteError (exit code 11), as for `--server`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import httpx

from ..errors import InputError
from ..judging.grades import error_row
from ..inputs import read_records
from .remote import CONNECT_TIMEOUT, RemoteError, check_url, record_body
from ..runs.score_file import unique_ids

TERMINAL = ("completed", "failed", "cancelled", "expired")
_LINE = re.compile(r"^batch_req_(\d+)_")


def lines_for_records(path: str | Path) -> Iterator[dict]:
    """/v1/grade lines for a file of records. A line `score` would turn into an error row (one it
    cannot read, or a repeated id: score_file.unique_ids) is sent as that error, under the id
    `score` gives its row, so the server answers it with an error row as `score` writes one."""
    for item in unique_ids(read_records(path), path):
        if isinstance(item, InputError):
            custom_id = item.record_id or str(item.line)
            yield {"custom_id": custom_id, "method": "POST", "url": "/v1/grade",
                   "body": {"id": custom_id, "prom_local_unreadable": str(item)}}
            continue
        yield {"custom_id": item.id, "method": "POST", "url": "/v1/grade", "body": record_body(item)}


def rows_from_results(output: bytes, errors: bytes) -> list[dict]:
    """The rows `score` writes, from a /v1/grade batch's output and error files, in input order:
    a 200 line's body is its row (or rows), any other line an error row under its custom_id."""
    entries = []
    for data in (output, errors):
        for raw in data.splitlines():
            if raw.strip():
                entry = json.loads(raw)
                found = _LINE.match(entry.get("id") or "")
                entries.append((int(found.group(1)) if found else 0, entry))
    rows: list[dict] = []
    for _, entry in sorted(entries, key=lambda pair: pair[0]):
        response = entry.get("response") or {}
        body = response.get("body")
        if response.get("status_code") == 200:
            rows.extend(body if isinstance(body, list) else [body])
            continue
        message = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
        message = message or (entry.get("error") or {}).get("message") or "the server gave no result"
        rows.append(error_row(message, row_id=entry.get("custom_id")).to_row())
    return rows


class BatchClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0):
        self.base = check_url(url) + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self.http.request(method, self.base + path, **kw)
        except httpx.TransportError as exc:
            raise RemoteError(f"{self.base}: cannot reach the server ({exc})") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise RemoteError(f"{method} {path}: {response.status_code} {message}")
        return response

    def submit(self, lines: list[dict], filename: str, metadata: dict | None = None) -> dict:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        uploaded = self._call("POST", "/files", data={"purpose": "batch"},
                              files={"file": (filename, data, "application/jsonl")}).json()
        body = {"input_file_id": uploaded["id"], "endpoint": "/v1/grade", "completion_window": "24h",
                "metadata": metadata}
        return self._call("POST", "/batches", json=body).json()

    def get(self, batch_id: str) -> dict:
        return self._call("GET", f"/batches/{batch_id}").json()

    def cancel(self, batch_id: str) -> dict:
        return self._call("POST", f"/batches/{batch_id}/cancel").json()

    def list(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/batches", params={"limit": limit}).json()["data"]

    def content(self, file_id: str | None) -> bytes:
        return b"" if not file_id else self._call("GET", f"/files/{file_id}/content").content
