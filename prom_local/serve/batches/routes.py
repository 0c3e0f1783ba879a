"""HTTP for the Batch API: OpenAI's /v1/files and /v1/batches, per owner (the API key's name).

Everything is looked up by (owner, id): another key's file or batch is a 404, as if it did not
exist, and never appears in its lists. Uploads are bounded before they are parsed (413 past
--batch-max-upload-mib, 400 past --batch-max-lines) and refused with 507 when the data dir's disk
would drop below --batch-min-free-mib.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ApiError, bad_request
from ..limits import parse_json
from ..service import Service
from .lines import ENDPOINTS, count_lines
from .runner import BatchConfig, BatchRunner
from .store import DiskFull, Store, StoreLimits

MULTIPART_OVERHEAD = 64 << 10   # headers and boundaries around the file part
WINDOWS = ("24h",)
CANCELLABLE = ("validating", "in_progress")


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{ident}'.", code="not_found")


class BatchApi:
    def __init__(self, service: Service, config: BatchConfig):
        self.service, self.config = service, config
        limits = StoreLimits(min_free_bytes=config.min_free_bytes,
                             retention_s=math.ceil(config.retention_days * 86400))
        self.store = Store(Path(config.data_dir), limits)
        self.runner = BatchRunner(service, self.store, config)
        service.metrics.registry.register(_Collector(self))

    def start(self) -> None:
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        self.store.close()

    def routes(self, endpoint) -> list[Route]:
        return [
            Route("/v1/files", endpoint("files", self.upload), methods=["POST"]),
            Route("/v1/files", endpoint("files", self.list_files), methods=["GET"]),
            Route("/v1/files/{id}", endpoint("files", self.get_file), methods=["GET"]),
            Route("/v1/files/{id}", endpoint("files", self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{id}/content", endpoint("files", self.content), methods=["GET"]),
            Route("/v1/batches", endpoint("batches", self.create), methods=["POST"]),
            Route("/v1/batches", endpoint("batches", self.list_batches), methods=["GET"]),
            Route("/v1/batches/{id}", endpoint("batches", self.get_batch), methods=["GET"]),
            Route("/v1/batches/{id}/cancel", endpoint("batches", self.cancel), methods=["POST"]),
        ]

    # -- files ------------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        owner = self.service.authenticate(request)
        raw = await self._read_upload(request)
        try:
            form = await Request(request.scope, _replay(raw)).form(max_files=1, max_fields=8)
        except HTTPException as exc:   # Starlette's answer to a malformed multipart body
            raise bad_request(f"The upload is not a valid multipart form: {exc.detail}", param="file") from None
        try:
            purpose, upload = form.get("purpose"), form.get("file")
            if purpose != "batch":
                raise bad_request("purpose must be 'batch' (the only purpose this server keeps files for).",
                                  param="purpose")
            if upload is None or isinstance(upload, str):
                raise bad_request("Expected the file in a multipart field named 'file'.", param="file")
            data = await upload.read()
        finally:
            await form.close()
        limit = self.config.max_upload_bytes
        if len(data) > limit:
            raise _too_large(limit)
        lines = count_lines(data)
        if lines > self.config.max_lines:
            raise bad_request(f"The file has {lines} lines; at most {self.config.max_lines} per batch "
                              "(--batch-max-lines).", param="file", code="too_many_lines")
        try:
            self.store.check_space(len(data))
            info = await asyncio.to_thread(self.store.add_file, owner, Path(upload.filename or "input.jsonl").name,
                                           purpose, data)
        except DiskFull as exc:
            raise ApiError(507, f"Not enough disk space to keep the file: {exc}.", type="server_error",
                           code="insufficient_storage") from None
        return JSONResponse(info)

    async def _read_upload(self, request: Request) -> bytes:
        limit = self.config.max_upload_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(self.config.max_upload_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _too_large(self.config.max_upload_bytes)
        return bytes(body)

    async def list_files(self, request: Request) -> Response:
        owner = self.service.authenticate(request)
        data = self.store.list_files(owner, request.query_params.get("purpose"))
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    def _file(self, request: Request) -> tuple[str, dict]:
        owner = self.service.authenticate(request)
        info = self.store.get_file(owner, request.path_params["id"])
        if info is None:
            raise not_found("file", request.path_params["id"])
        return owner, info

    async def get_file(self, request: Request) -> Response:
        return JSONResponse(self._file(request)[1])

    async def content(self, request: Request) -> Response:
        _, info = self._file(request)
        data = await asyncio.to_thread(self.store.path(info["id"]).read_bytes)
        return Response(data, media_type="application/jsonl")

    async def delete_file(self, request: Request) -> Response:
        owner, info = self._file(request)
        self.store.delete_file(owner, info["id"])
        return JSONResponse({"id": info["id"], "object": "file", "deleted": True})

    # -- batches ----------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        owner = self.service.authenticate(request)
        body = await parse_json(await self.service.read_body(request))
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or self.store.get_file(owner, file_id) is None:
            raise not_found("file", str(file_id))
        if body.get("endpoint") not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
        if body.get("completion_window") not in WINDOWS:
            raise bad_request("completion_window must be '24h'.", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
                for k, v in metadata.items())):
            raise bad_request("metadata must be at most 16 string pairs (keys up to 64, values up to 512 "
                              "characters).", param="metadata")
        batch = self.store.add_batch(owner, file_id, body["endpoint"], body["completion_window"], metadata)
        self.runner.wake()
        return JSONResponse(self._shown(batch))

    def _batch(self, request: Request) -> tuple[str, dict]:
        owner = self.service.authenticate(request)
        batch = self.store.get_batch(owner, request.path_params["id"])
        if batch is None:
            raise not_found("batch", request.path_params["id"])
        return owner, batch

    def _shown(self, batch: dict) -> dict:
        paused = self.runner.paused.get(batch["id"])
        return {**batch, "prom_local": {"paused": paused}} if paused else batch

    async def get_batch(self, request: Request) -> Response:
        return JSONResponse(self._shown(self._batch(request)[1]))

    async def list_batches(self, request: Request) -> Response:
        owner = self.service.authenticate(request)
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise bad_request("limit must be a whole number from 1 to 100.", param="limit")
        data, more = self.store.list_batches(owner, int(raw), request.query_params.get("after"))
        data = [self._shown(b) for b in data]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})

    async def cancel(self, request: Request) -> Response:
        owner, batch = self._batch(request)
        if batch["status"] in CANCELLABLE:
            self.store.set_status(batch["id"], "cancelling", only_from=CANCELLABLE)
            self.runner.cancel(batch["id"])
        elif batch["status"] not in ("cancelling", "cancelled"):
            raise ApiError(409, f"Cannot cancel a batch that is {batch['status']}.", code="batch_not_cancellable")
        return JSONResponse(self._shown(self.store.get_batch(owner, batch["id"])))


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"The file is larger than {limit} bytes (--batch-max-upload-mib).",
                    code="file_too_large")


def _replay(raw: bytes):
    """A receive() that gives the already-read (bounded) body once more, for the form parser."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}
    return receive


class _Collector:
    """Batch counters on the server's /metrics."""

    def __init__(self, api: BatchApi):
        self.api = api

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("prom_local_batch_lines_run", "Batch lines sent to the engine since the "
                                  "server started (a line cut off and run again counts twice)",
                                  value=self.api.runner.lines_run)
        yield GaugeMetricFamily("prom_local_batches_paused", "Batches waiting for disk space",
                                value=len(self.api.runner.paused))
