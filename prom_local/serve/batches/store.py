"""The durable side of the Batch API: an SQLite index (WAL) beside the files themselves.

Layout of the data dir:
  index.sqlite3   files, batches, and one row per finished batch line (`results`)
  files/<id>      uploaded inputs and written outputs, each written to a temporary name and renamed,
                  so a file row never points at a half-written file

Exactly once: a line's result is one INSERT committed with its batch's counters in the same
transaction, keyed by (batch, line). A line cut off by a crash has no row and runs again on restart;
a line with a row is never run again. Output and error files are built from these rows at the end,
under ids derived from the batch id, so finishing twice (a crash while finishing) rewrites the same files.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, seq INTEGER NOT NULL, input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL, completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0, errors TEXT, output_file_id TEXT, error_file_id TEXT,
    created_at INTEGER NOT NULL, in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
    failed_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER, expires_at INTEGER);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT, ok INTEGER NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (batch_id, line));
"""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "cancelling_at", "cancelled_at", "expires_at")


class DiskFull(Exception):
    """Too little free space under the data dir to go on writing (checked, or ENOSPC)."""


@dataclass
class StoreLimits:
    min_free_bytes: int = 64 << 20         # keep this much free under the data dir
    retention_s: int = 30 * 86400           # files older than this are deleted (0: kept)


class Store:
    def __init__(self, root: Path, limits: StoreLimits | None = None):
        self.root = Path(root)
        self.limits = limits or StoreLimits()
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        # One connection, used from the event loop and the runner under one lock: SQLite's own
        # locking then never sees two writers of ours; WAL lets a reader (a copy, a backup) in.
        self._db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")   # a committed line survives a power cut too
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _tx(self, *statements: tuple[str, tuple]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                if "full" in str(exc):
                    raise DiskFull(f"the disk under {self.root} is full ({exc})") from None
                raise
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass   # nothing was begun

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def free_bytes(self) -> int:
        return os.statvfs(self.root).f_bavail * os.statvfs(self.root).f_frsize

    def check_space(self, needed: int = 0) -> None:
        free = self.free_bytes()
        if free - needed < self.limits.min_free_bytes:
            raise DiskFull(f"{free >> 20} MiB free under {self.root}, {needed >> 20} MiB needed plus "
                           f"{self.limits.min_free_bytes >> 20} MiB kept free (--batch-min-free-mib)")

    def path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    # -- files ------------------------------------------------------------------------------------
    def add_file(self, owner: str, filename: str, purpose: str, data: bytes, file_id: str | None = None) -> dict:
        """Write the bytes (temporary name, fsync, rename), then index them. ENOSPC is DiskFull."""
        file_id = file_id or "file-" + secrets.token_hex(12)
        final = self.path(file_id)
        tmp = final.with_name(final.name + ".part")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno == 28:   # ENOSPC
                raise DiskFull(f"the disk under {self.root} is full") from None
            raise
        now = int(time.time())
        self._tx(("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)",
                  (file_id, owner, filename, purpose, len(data), now,
                   now + self.limits.retention_s if self.limits.retention_s else None)))
        return self.get_file(owner, file_id)

    def get_file(self, owner: str, file_id: str) -> dict | None:
        row = self._one("SELECT * FROM files WHERE id=? AND owner=?", (file_id, owner))
        return _file_object(row) if row else None

    def list_files(self, owner: str, purpose: str | None = None) -> list[dict]:
        rows = self._all("SELECT * FROM files WHERE owner=? AND (? IS NULL OR purpose=?) ORDER BY created_at DESC, id",
                         (owner, purpose, purpose))
        return [_file_object(r) for r in rows]

    def delete_file(self, owner: str, file_id: str) -> bool:
        if self.get_file(owner, file_id) is None:
            return False
        self._tx(("DELETE FROM files WHERE id=?", (file_id,)))
        self.path(file_id).unlink(missing_ok=True)
        return True

    def expire(self, now: float | None = None) -> int:
        """Delete files past their retention (inputs of active batches are kept until they end)."""
        now = int(now if now is not None else time.time())
        rows = self._all("SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? AND id NOT IN "
                         f"(SELECT input_file_id FROM batches WHERE status IN {ACTIVE})", (now,))
        for row in rows:
            self._tx(("DELETE FROM files WHERE id=?", (row["id"],)))
            self.path(row["id"]).unlink(missing_ok=True)
        return len(rows)

    # -- batches ----------------------------------------------------------------------------------
    def add_batch(self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> dict:
        batch_id = "batch_" + secrets.token_hex(12)
        now = int(time.time())
        seq = (self._one("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM batches")["n"])
        self._tx(("INSERT INTO batches (id, owner, seq, input_file_id, endpoint, completion_window, metadata, "
                  "status, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  (batch_id, owner, seq, input_file_id, endpoint, window,
                   json.dumps(metadata) if metadata is not None else None, "validating", now, now + 86400)))
        return self.get_batch(owner, batch_id)

    def batch_row(self, batch_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM batches WHERE id=?", (batch_id,))

    def get_batch(self, owner: str, batch_id: str) -> dict | None:
        row = self._one("SELECT * FROM batches WHERE id=? AND owner=?", (batch_id, owner))
        return batch_object(row) if row else None

    def list_batches(self, owner: str, limit: int, after: str | None) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page."""
        start = None
        if after is not None:
            row = self._one("SELECT seq FROM batches WHERE id=? AND owner=?", (after, owner))
            start = row["seq"] if row else None
        rows = self._all("SELECT * FROM batches WHERE owner=? AND (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                         (owner, start, start, limit + 1))
        return [batch_object(r) for r in rows[:limit]], len(rows) > limit

    def active(self) -> list[sqlite3.Row]:
        return self._all(f"SELECT * FROM batches WHERE status IN {ACTIVE} ORDER BY seq")

    def set_status(self, batch_id: str, status: str, *, only_from: tuple = (), **fields) -> bool:
        """Move a batch to `status` (stamping `<status>_at`), optionally only from given statuses."""
        stamp = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
                 "cancelling": "cancelling_at", "in_progress": "in_progress_at",
                 "finalizing": "finalizing_at"}.get(status)
        values = {"status": status, **fields}
        if stamp:
            values[stamp] = int(time.time())
        sets = ", ".join(f"{k}=?" for k in values)
        where = " AND status IN (" + ",".join("?" * len(only_from)) + ")" if only_from else ""
        with self._lock:
            before = self._db.total_changes
            self._tx((f"UPDATE batches SET {sets} WHERE id=?{where}", (*values.values(), batch_id, *only_from)))
            return self._db.total_changes > before

    # -- results ----------------------------------------------------------------------------------
    def done_lines(self, batch_id: str) -> set[int]:
        return {r["line"] for r in self._all("SELECT line FROM results WHERE batch_id=?", (batch_id,))}

    def save_result(self, batch_id: str, line: int, custom_id: str | None, ok: bool, body: dict) -> None:
        """One line's result and its batch's counters, in one transaction (the exactly-once point)."""
        counter = "completed" if ok else "failed"
        self._tx(("INSERT INTO results VALUES (?,?,?,?,?)",
                  (batch_id, line, custom_id, int(ok), json.dumps(body, ensure_ascii=False))),
                 (f"UPDATE batches SET {counter} = {counter} + 1 WHERE id=?", (batch_id,)))

    def results(self, batch_id: str) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM results WHERE batch_id=? ORDER BY line", (batch_id,))


def _file_object(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "expires_at": row["expires_at"], "filename": row["filename"], "purpose": row["purpose"],
            "status": "processed", "status_details": None}


def batch_object(row: sqlite3.Row) -> dict:
    body = {"id": row["id"], "object": "batch", "endpoint": row["endpoint"],
            "errors": json.loads(row["errors"]) if row["errors"] else None,
            "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
            "status": row["status"], "output_file_id": row["output_file_id"],
            "error_file_id": row["error_file_id"],
            "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
            "metadata": json.loads(row["metadata"]) if row["metadata"] else None}
    body.update({k: row[k] for k in TIMESTAMPS})
    return body
