"""HTTP for the Batch API: OpenAI's /v1/files and /v1/batches, per owner (the API key's name).

Everything is looked up by (owner, id): another key's file or batch is a 404, as if it did not
exist, and never appears in its lists. Every store call runs in a worker thread. Uploads stream to
disk (upload.py), bounded while they arrive (413 past --batch-max-upload-mib, 400 past
--batch-max-lines), and are refused with 507 when the data dir's disk would drop below
--batch-min-free-mib. Each key has its own bounds, answered with 429 and what frees them: batches
not yet ended (--batch-key-max-active), files and bytes kept (--batch-key-max-files,
--batch-key-max-mib), uploads at once (BatchConfig.max_uploads). A file that a batch not yet ended
reads cannot be deleted (409): the batch reads it line by line for as long as it runs, and again
after a restart.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..errors import ApiError, bad_request
from ..limits import MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE, query_int, shown_id
from ..service import Service
from . import upload
from .lines import ENDPOINTS
from .config import BatchConfig
from .runner import BatchRunner
from .store import DiskFull, Store, StoreLimits, UnknownId

WINDOWS = ("24h",)
CANCELLABLE = ("validating", "in_progress")


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(404, f"No {kind} found with id '{shown_id(ident)}'.", code="not_found")


def too_many(message: str, code: str) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code=code)


class BatchApi:
    def __init__(self, service: Service, config: BatchConfig):
        self.service, self.config = service, config
        limits = StoreLimits(min_free_bytes=config.min_free_bytes,
                             retention_s=math.ceil(config.retention_days * 86400))
        self.store = Store(Path(config.data_dir), limits)
        self.runner = BatchRunner(service, self.store, config)
        self.uploading: collections.Counter = collections.Counter()   # owner -> uploads in progress
        service.metrics.registry.register(_Collector(self))

    def start(self) -> None:
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await to_thread.run_sync(self.store.close)

    def routes(self, door) -> list[Route]:
        """The routes, each core behind `door(name, core, body=...)` (door.py: key, body, errors, metrics)."""
        return [
            Route("/v1/files", door("files", self.upload), methods=["POST"]),   # streams its own body
            Route("/v1/files", door("files", self.list_files), methods=["GET"]),
            Route("/v1/files/{id}", door("files", self.get_file), methods=["GET"]),
            Route("/v1/files/{id}", door("files", self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{id}/content", door("files", self.content), methods=["GET"]),
            Route("/v1/batches", door("batches", self.create, body=True), methods=["POST"]),
            Route("/v1/batches", door("batches", self.list_batches), methods=["GET"]),
            Route("/v1/batches/{id}", door("batches", self.get_batch), methods=["GET"]),
            Route("/v1/batches/{id}/cancel", door("batches", self.cancel), methods=["POST"]),
        ]

    async def _in_thread(self, fn, *args):
        return await to_thread.run_sync(fn, *args)

    # -- files ------------------------------------------------------------------------------------
    async def upload(self, owner: str, body: None, request: Request) -> dict:
        if self.uploading[owner] >= self.config.max_uploads:
            raise too_many(f"This key already has {self.config.max_uploads} uploads in progress; send the next "
                           "one when one of them has ended.", "too_many_uploads")
        self.uploading[owner] += 1
        try:
            return await self._receive(owner, request)
        finally:
            self.uploading[owner] -= 1
            if not self.uploading[owner]:
                del self.uploading[owner]

    async def _receive(self, owner: str, request: Request) -> dict:
        files, kept = await self._in_thread(self.store.usage, owner)
        if files >= self.config.max_files:
            raise too_many(f"This key keeps {files} files, its most (--batch-key-max-files): delete files it no "
                           "longer needs (DELETE /v1/files/{id}; batch outputs count too).", "too_many_files")
        quota = self.config.max_key_bytes - kept
        if quota <= 0:
            raise upload.over_quota(0)
        try:
            await self._in_thread(self.store.check_space, 0)
        except DiskFull as exc:
            raise _disk_full(exc) from None
        file_id = self.store.new_file_id()
        part = self.store.part_path(file_id)
        bounds = upload.UploadBounds(self.config.max_upload_bytes, self.config.max_lines, quota,
                                     self.service.config.request_read_timeout)
        try:
            got = await upload.receive(request, part, bounds)
            if got.purpose != "batch":
                raise bad_request("purpose must be 'batch' (the only purpose this server keeps files for).",
                                  param="purpose")
            await self._in_thread(self.store.check_space, got.bytes)
            return await self._in_thread(self.store.commit_file, owner, got.filename, got.purpose, file_id)
        except DiskFull as exc:
            raise _disk_full(exc) from None
        finally:   # gone once committed; otherwise what was written so far
            await self._in_thread(part.unlink, True)

    async def list_files(self, owner: str, body: None, request: Request) -> dict:
        params = request.query_params
        limit = query_int(params, "limit", 10_000, 1, 10_000)
        order = params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be 'asc' or 'desc'.", param="order")
        purpose = params.get("purpose")
        try:
            data, more = await self._in_thread(
                lambda: self.store.files_page(owner, purpose, limit, params.get("after"), order))
        except UnknownId as exc:
            raise bad_request(f"after: no file with id '{shown_id(exc.args[0])}'.", param="after") from None
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def _file(self, owner: str, request: Request) -> dict:
        info = await self._in_thread(self.store.get_file, owner, request.path_params["id"])
        if info is None:
            raise not_found("file", request.path_params["id"])
        return info

    async def get_file(self, owner: str, body: None, request: Request) -> dict:
        return await self._file(owner, request)

    async def content(self, owner: str, body: None, request: Request) -> Response:
        info = await self._file(owner, request)
        path = self.store.path(info["id"])
        if not await self._in_thread(path.is_file):   # removed on disk behind the index's back
            raise not_found("file", info["id"])
        # Starlette sends a file in chunks, reading each in a worker thread.
        return FileResponse(path, media_type="application/jsonl")

    async def delete_file(self, owner: str, body: None, request: Request) -> dict:
        info = await self._file(owner, request)
        if await self._in_thread(self.store.in_use, info["id"]):
            raise ApiError(409, f"File '{info['id']}' is the input of a batch that has not ended; cancel the "
                           "batch (POST /v1/batches/{id}/cancel) or let it end first.", code="file_in_use")
        await self._in_thread(self.store.delete_file, owner, info["id"])
        return {"id": info["id"], "object": "file", "deleted": True}

    # -- batches ----------------------------------------------------------------------------------
    async def create(self, owner: str, body: object, request: Request) -> dict:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        file_id = body.get("input_file_id")
        info = await self._in_thread(self.store.get_file, owner, file_id) if isinstance(file_id, str) else None
        if info is None:
            raise not_found("file", file_id)
        if info["purpose"] != "batch":
            raise bad_request(f"File '{file_id}' has purpose '{info['purpose']}'; a batch's input must be a file "
                              "uploaded with purpose 'batch'.", param="input_file_id", code="invalid_input_file")
        if body.get("endpoint") not in ENDPOINTS:
            raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
        if body.get("completion_window") not in WINDOWS:
            raise bad_request("completion_window must be '24h'.", param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= MAX_METADATA and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_METADATA_KEY
                and len(v) <= MAX_METADATA_VALUE for k, v in metadata.items())):
            raise bad_request(f"metadata must be at most {MAX_METADATA} string pairs (keys up to {MAX_METADATA_KEY}, "
                              f"values up to {MAX_METADATA_VALUE} characters).", param="metadata")
        active = await self._in_thread(self.store.active_count, owner)
        if active >= self.config.max_active:
            raise too_many(f"This key has {active} batches not yet ended, its most (--batch-key-max-active): "
                           "wait for one to end, or cancel one (POST /v1/batches/{id}/cancel).", "too_many_batches")
        batch = await self._in_thread(lambda: self.store.add_batch(owner, file_id, body["endpoint"],
                                                                   body["completion_window"], metadata))
        self.runner.wake()
        return self._shown(batch)

    async def _batch(self, owner: str, request: Request) -> dict:
        batch = await self._in_thread(self.store.get_batch, owner, request.path_params["id"])
        if batch is None:
            raise not_found("batch", request.path_params["id"])
        return batch

    def _shown(self, batch: dict) -> dict:
        paused = self.runner.paused.get(batch["id"])
        return {**batch, "prom_local": {"paused": paused}} if paused else batch

    async def get_batch(self, owner: str, body: None, request: Request) -> dict:
        return self._shown(await self._batch(owner, request))

    async def list_batches(self, owner: str, body: None, request: Request) -> dict:
        limit = query_int(request.query_params, "limit", 20, 1, 100)
        try:
            data, more = await self._in_thread(self.store.list_batches, owner, limit,
                                               request.query_params.get("after"))
        except UnknownId as exc:
            raise bad_request(f"after: no batch with id '{shown_id(exc.args[0])}'.", param="after") from None
        data = [self._shown(b) for b in data]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    async def cancel(self, owner: str, body: None, request: Request) -> dict:
        batch = await self._batch(owner, request)
        if batch["status"] in CANCELLABLE:
            await self._in_thread(lambda: self.store.set_status(batch["id"], "cancelling", only_from=CANCELLABLE))
            self.runner.cancel(batch["id"])
        elif batch["status"] not in ("cancelling", "cancelled"):
            raise ApiError(409, f"Cannot cancel a batch that is {batch['status']}.", code="batch_not_cancellable")
        return self._shown(await self._in_thread(self.store.get_batch, owner, batch["id"]))


def _disk_full(exc: DiskFull) -> ApiError:
    return ApiError(507, f"Not enough disk space to keep the file: {exc}.", type="server_error",
                    code="insufficient_storage")


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
