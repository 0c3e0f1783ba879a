"""The batch worker: asyncio tasks in the server's loop, one per owner (API key name) with active
batches, each running that owner's batches oldest first; their lines take turns on the engine
round-robin across owners (turns.py), so one key's long queue never starves another key's batch.

How batch work shares the engine with interactive requests (it yields to them):
- a batch line starts only while the engine has a slot nobody else wants: fewer sequences are
  admitted (interactive and batch together) than --parallel, and
- batch work never holds more than --batch-slots sequences (default: --parallel minus one, at least
  one), so with --parallel 2 or more one slot is always left for interactive requests.
An interactive request therefore never queues behind a batch: it takes the spare slot at once, or
(with --parallel 1) waits for at most the one batch line in flight. Batch lines wait instead while
interactive traffic keeps the slots busy. A slot is waited for on an event (a line or a request
ending), never by polling.

Nothing here touches the disk on the event loop: the store, the input file (read a chunk of lines
at a time, lines.py) and the output files are all used from worker threads.

A line's result is stored the moment it ends (store.save_results: the exactly-once point; a run of
error lines is stored in one transaction). Cancel, shutdown or a crash cuts off lines in flight;
they have no result and run again on resume (a cancelled batch keeps only what had finished). Too
little disk space pauses the batch (its status stays in_progress, with `prom_local.paused` saying
why) until space is freed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
from pathlib import Path

from anyio import to_thread

from ..service import Service
from .calls import GONE, call
from .config import BatchConfig
from .lines import Line, LineReader, NotJsonl, survey
from .store import DiskFull, Store
from .turns import Turns

log = logging.getLogger("prom_local.serve")
RETRY_S = 0.5          # a line refused with 503 (loading, queue full) is tried again after this
READ_LINES = 256       # lines read (and error lines stored) per worker-thread call
READ_BYTES = 4 << 20   # ... and at most about this many bytes of them
FINAL = ("completed", "failed", "cancelled", "expired")


class BatchRunner:
    def __init__(self, service: Service, store: Store, config: BatchConfig):
        self.service, self.store, self.config = service, store, config
        self.paused: dict[str, str] = {}            # batch id -> why it waits
        self.lines_run = 0                          # lines sent to the engine since this server started
        self.turns = Turns(self._may_start)
        self._gone: dict[str, asyncio.Event] = {}   # batch id -> "cut its lines in flight"
        self._owners: dict[str, asyncio.Task] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        def released() -> None:   # a sequence of anyone's ended (engine threads too): maybe a line's turn
            try:
                loop.call_soon_threadsafe(self.turns.poke)
            except RuntimeError:      # the loop has closed: the server is stopping
                pass

        self.service.on_release = released
        self._task = loop.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping.set()
        self.service.on_release = None
        for event in self._gone.values():
            event.set()
        tasks = [t for t in (self._task, *self._owners.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """The batch was marked cancelling: cut its lines in flight now."""
        event = self._gone.get(batch_id)
        if event is not None:
            event.set()
        self.wake()

    def _may_start(self, running: int) -> bool:
        """The module's rules: a free slot nobody else wants, within --batch-slots."""
        if not self.service.ready:
            return False
        n_parallel = self.service.n_parallel
        most = self.config.batch_slots or max(1, n_parallel - 1)
        return running < most and self.service.admission.admitted < n_parallel

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await to_thread.run_sync(self.store.expire)
                if not self.service.ready:
                    continue
                self.turns.poke()
                for row in await to_thread.run_sync(self.store.active):
                    owner = row["owner"]
                    if owner not in self._owners:
                        self._owners[owner] = asyncio.get_running_loop().create_task(self._owner(owner))
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug must not end the worker: log it, try again next round
                log.exception("batch worker")

    async def _owner(self, owner: str) -> None:
        """This owner's batches, oldest first, until none is left (or one waits for disk space)."""
        try:
            while True:
                row = await to_thread.run_sync(self.store.oldest_active, owner)
                if row is None:
                    self.turns.forget(owner)
                    return
                await self._run(row)
                after = await to_thread.run_sync(self.store.batch_row, row["id"])
                if after["status"] not in FINAL:   # paused, or stopping: the loop comes back later
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch worker (%s)", owner)
        finally:
            self._owners.pop(owner, None)

    # -- one batch --------------------------------------------------------------------------------
    async def _run(self, row) -> None:
        batch_id = row["id"]
        path = self.store.path(row["input_file_id"])
        if row["status"] == "validating":
            try:
                total = await to_thread.run_sync(survey, path, self.service.config.max_body_bytes)
            except (NotJsonl, OSError) as exc:
                return await self._fail(batch_id, exc)
            await to_thread.run_sync(lambda: self.store.set_status(batch_id, "in_progress", only_from=("validating",),
                                                                   total=total))
        if not await self._space_ok(batch_id):
            return
        status = (await to_thread.run_sync(self.store.batch_row, batch_id))["status"]
        if status == "in_progress":
            try:
                await self._execute(batch_id, row, path)
            except OSError as exc:   # the input file went away under a running batch
                return await self._fail(batch_id, exc)
        if batch_id in self.paused or self._stopping.is_set():
            return
        status = (await to_thread.run_sync(self.store.batch_row, batch_id))["status"]
        if status == "in_progress":
            await to_thread.run_sync(lambda: self.store.set_status(batch_id, "finalizing", only_from=("in_progress",)))
        await self._finish(batch_id, "cancelled" if status == "cancelling" else "completed")

    async def _fail(self, batch_id: str, exc: Exception) -> None:
        if isinstance(exc, NotJsonl):
            message = str(exc)
        else:   # the OS's words name the server's paths: they go to the log, not to the client
            log.warning("batch %s: its input file cannot be read: %s", batch_id, exc)
            message = "the input file is gone (deleted or unreadable on the server)"
        errors = {"object": "list", "data": [{"code": "invalid_file", "message": message,
                                               "param": "input_file_id", "line": None}]}
        await to_thread.run_sync(lambda: self.store.set_status(batch_id, "failed", errors=json.dumps(errors)))

    async def _space_ok(self, batch_id: str) -> bool:
        try:
            await to_thread.run_sync(self.store.check_space)
        except DiskFull as exc:
            self._pause(batch_id, exc)
            return False
        if self.paused.pop(batch_id, None) is not None:
            log.info("batch %s resumes: disk space is back", batch_id)
        return True

    def _pause(self, batch_id: str, exc: DiskFull) -> None:
        if batch_id not in self.paused:
            log.warning("batch %s paused: %s", batch_id, exc.detail)
        self.paused[batch_id] = f"disk full: {exc}; the batch resumes by itself once space is freed"

    async def _execute(self, batch_id: str, row, path: Path) -> None:
        done = await to_thread.run_sync(self.store.done_lines, batch_id)
        reader = await to_thread.run_sync(LineReader, path, row["endpoint"], self.service.config.max_body_bytes)
        gone = self._gone.setdefault(batch_id, asyncio.Event())
        running: set[asyncio.Task] = set()
        try:
            while not gone.is_set() and batch_id not in self.paused:
                lines = await to_thread.run_sync(reader.take, READ_LINES, done, READ_BYTES)
                if not lines or not await self._lines(batch_id, row, lines, gone, running):
                    break
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        finally:
            self._gone.pop(batch_id, None)
            await to_thread.run_sync(reader.close)

    async def _lines(self, batch_id: str, row, lines: list[Line], gone: asyncio.Event, running: set) -> bool:
        """Store the error lines of a chunk together, start the others in fair turns; False when
        the batch was cut off or paused."""
        errors: list[Line] = []
        for line in lines:
            if line.error is not None:
                errors.append(line)
                continue
            if errors:
                await self._save(batch_id, [(line_, None, line_.error) for line_ in errors])
                errors = []
            if not await self.turns.take(row["owner"], gone):
                return False
            if not await self._space_ok(batch_id):
                self.turns.done()
                return False
            task = asyncio.get_running_loop().create_task(self._line(batch_id, row, line, gone))
            running.add(task)
            task.add_done_callback(running.discard)
        if errors:
            await self._save(batch_id, [(line_, None, line_.error) for line_ in errors])
        return not gone.is_set() and batch_id not in self.paused

    async def _line(self, batch_id: str, row, line: Line, gone: asyncio.Event) -> None:
        try:
            while True:
                self.lines_run += 1
                status, body = await call(self.service, row["endpoint"], line.body, row["owner"], gone)
                if status == GONE:
                    return   # cancelled or shutting down: no result, so a resume runs it again
                if status == 503 and not gone.is_set():   # loading or queue full: not the line's fault
                    await asyncio.sleep(RETRY_S)
                    continue
                break
        finally:
            self.turns.done()
        response = {"status_code": status, "request_id": f"req_{secrets.token_hex(12)}", "body": body}
        await self._save(batch_id, [(line, response, None)])

    async def _save(self, batch_id: str, done: list[tuple[Line, dict | None, dict | None]]) -> None:
        results = []
        for line, response, error in done:
            ok = response is not None and response["status_code"] == 200
            results.append((line.number, line.custom_id, ok, {
                "id": f"batch_req_{line.number:08d}_{secrets.token_hex(6)}", "custom_id": line.custom_id,
                "response": response, "error": error}))
        try:
            await to_thread.run_sync(self.store.save_results, batch_id, results)
        except DiskFull as exc:   # not stored: the lines run again once there is space
            self._pause(batch_id, exc)

    # -- the end ----------------------------------------------------------------------------------
    async def _finish(self, batch_id: str, final: str) -> None:
        """Write the output and error files from the stored results, then the final status. Safe
        to repeat: the file ids are the batch's own, so a second attempt rewrites the same files."""
        try:
            ids = await to_thread.run_sync(self._write_outputs, batch_id)
        except DiskFull as exc:
            self._pause(batch_id, exc)
            return
        await to_thread.run_sync(lambda: self.store.set_status(
            batch_id, final, output_file_id=ids["output"], error_file_id=ids["error"]))
        log.info("batch %s %s", batch_id, final)

    def _write_outputs(self, batch_id: str) -> dict[str, str | None]:
        """(In a worker thread.) The output and error files, streamed from the results."""
        owner = self.store.batch_row(batch_id)["owner"]
        ids: dict[str, str | None] = {}
        for kind, ok in (("output", True), ("error", False)):
            self.store.check_space()
            file_id = f"file-{batch_id.removeprefix('batch_')}-{kind}"
            part = self.store.part_path(file_id)
            try:
                with open(part, "wb") as handle:
                    written = self.store.write_results(batch_id, ok, handle)
            except OSError as exc:
                part.unlink(missing_ok=True)
                if exc.errno == errno.ENOSPC:
                    raise DiskFull("the server's disk is full", f"the disk under {self.store.root} is full") from None
                raise
            if not written:
                part.unlink(missing_ok=True)
                ids[kind] = None
                continue
            ids[kind] = self.store.commit_file(owner, f"{batch_id}_{kind}.jsonl", f"batch_{kind}", file_id)["id"]
        return ids
