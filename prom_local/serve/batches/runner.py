"""The batch worker: one asyncio task in the server's loop that runs batches oldest first.

How batch work shares the engine with interactive requests (it yields to them):
- a batch line starts only while the engine has a slot nobody else wants: fewer sequences are
  admitted (interactive and batch together) than --parallel, and
- a batch never holds more than --batch-slots sequences (default: --parallel minus one, at least
  one), so with --parallel 2 or more one slot is always left for interactive requests.
An interactive request therefore never queues behind a batch: it takes the spare slot at once, or
(with --parallel 1) waits for at most the one batch line in flight. Batch lines wait instead while
interactive traffic keeps the slots busy.

A line's result is stored the moment it ends (store.save_result: the exactly-once point). Cancel,
shutdown or a crash cuts off lines in flight; they have no result and run again on resume (a
cancelled batch keeps only what had finished). Too little disk space pauses the batch (its status
stays in_progress, with `prom_local.paused` saying why) until space is freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass

from ..service import Service
from .calls import GONE, call
from .lines import Line, NotJsonl, read_lines
from .store import DiskFull, Store

log = logging.getLogger("prom_local.serve")
RETRY_S = 0.5      # a line refused with 503 (loading, queue full) is tried again after this
SLOT_POLL_S = 0.02


@dataclass
class BatchConfig:
    data_dir: object                 # Path
    max_upload_bytes: int = 200 << 20
    max_lines: int = 50_000
    min_free_bytes: int = 64 << 20
    retention_days: float = 30.0
    batch_slots: int | None = None   # None: --parallel minus one, at least one
    poll_s: float = 2.0              # how often a paused batch re-checks the disk, and expiry runs


class BatchRunner:
    def __init__(self, service: Service, store: Store, config: BatchConfig):
        self.service, self.store, self.config = service, store, config
        self.paused: dict[str, str] = {}            # batch id -> why it waits
        self.lines_run = 0                          # lines sent to the engine since this server started
        self._gone: dict[str, asyncio.Event] = {}   # batch id -> "cut its lines in flight"
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for event in self._gone.values():
            event.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """The batch was marked cancelling: cut its lines in flight now."""
        event = self._gone.get(batch_id)
        if event is not None:
            event.set()
        self.wake()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.store.expire()
                if not self.service.ready:
                    continue
                for row in self.store.active():
                    await self._run(row["id"])
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug must not end the worker: log it, try again next round
                log.exception("batch worker")

    # -- one batch --------------------------------------------------------------------------------
    async def _run(self, batch_id: str) -> None:
        row = self.store.batch_row(batch_id)
        try:
            lines = read_lines(self.store.path(row["input_file_id"]), row["endpoint"])
        except (NotJsonl, OSError) as exc:
            message = str(exc) if isinstance(exc, NotJsonl) else f"the input file cannot be read ({exc})"
            errors = {"object": "list", "data": [{"code": "invalid_file", "message": message,
                                                   "param": "input_file_id", "line": None}]}
            self.store.set_status(batch_id, "failed", errors=json.dumps(errors))
            return
        if row["status"] == "validating":
            self.store.set_status(batch_id, "in_progress", only_from=("validating",), total=len(lines))
        if not self._space_ok(batch_id):
            return
        if self.store.batch_row(batch_id)["status"] == "in_progress":
            await self._execute(batch_id, row, lines)
        if batch_id in self.paused:
            return
        status = self.store.batch_row(batch_id)["status"]
        if status == "in_progress":
            self.store.set_status(batch_id, "finalizing", only_from=("in_progress",))
        self._finish(batch_id, "cancelled" if status == "cancelling" else "completed")

    def _space_ok(self, batch_id: str) -> bool:
        try:
            self.store.check_space()
        except DiskFull as exc:
            self._pause(batch_id, exc)
            return False
        if self.paused.pop(batch_id, None) is not None:
            log.info("batch %s resumes: disk space is back", batch_id)
        return True

    def _pause(self, batch_id: str, exc: DiskFull) -> None:
        if batch_id not in self.paused:
            log.warning("batch %s paused: %s", batch_id, exc)
        self.paused[batch_id] = f"disk full: {exc}; the batch resumes by itself once space is freed"

    async def _execute(self, batch_id: str, row, lines: list[Line]) -> None:
        done = self.store.done_lines(batch_id)
        gone = self._gone.setdefault(batch_id, asyncio.Event())
        running: set[asyncio.Task] = set()
        try:
            for line in lines:
                if line.number in done:
                    continue
                if gone.is_set() or batch_id in self.paused:
                    break
                if line.error is not None:
                    self._save(batch_id, line, None, line.error)
                    continue
                if not await self._slot(running, gone) or not self._space_ok(batch_id):
                    break
                task = asyncio.get_running_loop().create_task(self._line(batch_id, row, line, gone))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            self._gone.pop(batch_id, None)

    async def _slot(self, running: set, gone: asyncio.Event) -> bool:
        """Wait for a slot this batch may take (see the module's docstring); False when cut off."""
        n_parallel = self.service.judge.n_parallel
        most = self.config.batch_slots or max(1, n_parallel - 1)
        while not gone.is_set():
            admission = self.service.admission
            if len(running) < most and admission.admitted < n_parallel:
                return True
            await asyncio.sleep(SLOT_POLL_S)
        return False

    async def _line(self, batch_id: str, row, line: Line, gone: asyncio.Event) -> None:
        while True:
            self.lines_run += 1
            status, body = await call(self.service, row["endpoint"], line.body, row["owner"], gone)
            if status == GONE:
                return   # cancelled or shutting down: no result, so a resume runs it again
            if status == 503 and not gone.is_set():   # loading or queue full: not the line's fault
                await asyncio.sleep(RETRY_S)
                continue
            break
        response = {"status_code": status, "request_id": f"req_{secrets.token_hex(12)}", "body": body}
        self._save(batch_id, line, response, None)

    def _save(self, batch_id: str, line: Line, response: dict | None, error: dict | None) -> None:
        ok = response is not None and response["status_code"] == 200
        result = {"id": f"batch_req_{line.number:08d}_{secrets.token_hex(6)}", "custom_id": line.custom_id,
                  "response": response, "error": error}
        try:
            self.store.save_result(batch_id, line.number, line.custom_id, ok, result)
        except DiskFull as exc:   # not stored: the line runs again once there is space
            self._pause(batch_id, exc)

    # -- the end ----------------------------------------------------------------------------------
    def _finish(self, batch_id: str, final: str) -> None:
        """Write the output and error files from the stored results, then the final status. Safe
        to repeat: the file ids are the batch's own, so a second attempt rewrites the same files."""
        row = self.store.batch_row(batch_id)
        rows = self.store.results(batch_id)
        ids: dict[str, str | None] = {}
        try:
            for kind, want in (("output", 1), ("error", 0)):
                chosen = [r["body"] for r in rows if r["ok"] == want]
                ids[kind] = None
                if chosen:
                    data = ("\n".join(chosen) + "\n").encode()
                    self.store.check_space(len(data))
                    ids[kind] = self.store.add_file(row["owner"], f"{batch_id}_{kind}.jsonl", f"batch_{kind}", data,
                                                    file_id=f"file-{batch_id.removeprefix('batch_')}-{kind}")["id"]
        except DiskFull as exc:
            self._pause(batch_id, exc)
            return
        self.store.set_status(batch_id, final, output_file_id=ids["output"], error_file_id=ids["error"])
        log.info("batch %s %s: %d lines", batch_id, final, len(rows))
