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

import errno
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
IN_ACTIVE = "status IN (" + ",".join("?" * len(ACTIVE)) + ")"   # with ACTIVE as its arguments
TIMESTAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
              "cancelling_at", "cancelled_at", "expires_at")
PAGE_ROWS = 1000   # results read per lock hold while an output file is written


class DiskFull(Exception):
    """Too little free space under the data dir to go on writing (checked, or ENOSPC). str() is
    what a client may read (no path); `detail` is for the server's log."""

    def __init__(self, public: str, detail: str = ""):
        super().__init__(public)
        self.detail = detail or public


class UnknownId(Exception):
    """A list's `after` names nothing of this owner."""


@dataclass
class StoreLimits:
    min_free_bytes: int = 64 << 20         # keep this much free under the data dir
    retention_s: int = 30 * 86400           # files older than this are deleted (0: kept)


class Store:
    """Every method blocks (SQLite, fsync, file writes): the HTTP side calls them in worker
    threads, never on the event loop. One connection under one lock serves those threads."""

    def __init__(self, root: Path, limits: StoreLimits | None = None):
        self.root = Path(root)
        self.limits = limits or StoreLimits()
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        # One connection under one lock: SQLite's own locking then never sees two writers of ours;
        # WAL lets a reader (a copy, a backup) in.
        self._db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")   # a committed line survives a power cut too
        self._db.executescript(SCHEMA)
        for leftover in self.files_dir.glob("*.part"):   # uploads cut off by a crash
            leftover.unlink(missing_ok=True)

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
                    raise DiskFull("the server's disk is full", f"the disk under {self.root} is full ({exc})") from None
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
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def check_space(self, needed: int = 0) -> None:
        free = self.free_bytes()
        if free - needed < self.limits.min_free_bytes:
            public = (f"{free >> 20} MiB free, {needed >> 20} MiB needed plus {self.limits.min_free_bytes >> 20} "
                      "MiB kept free (--batch-min-free-mib)")
            raise DiskFull(public, f"{public}, under {self.root}")

    def path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    # -- files ------------------------------------------------------------------------------------
    def new_file_id(self) -> str:
        return "file-" + secrets.token_hex(12)

    def part_path(self, file_id: str) -> Path:
        """Where a file is written before it is whole (store.commit_file renames it)."""
        return self.files_dir / (file_id + ".part")

    def add_file(self, owner: str, filename: str, purpose: str, data: bytes, file_id: str | None = None) -> dict:
        """Write the bytes (temporary name, fsync, rename), then index them. ENOSPC is DiskFull."""
        file_id = file_id or self.new_file_id()
        tmp = self.part_path(file_id)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _disk_error(exc, self.root) from None
        return self.commit_file(owner, filename, purpose, file_id)

    def commit_file(self, owner: str, filename: str, purpose: str, file_id: str) -> dict:
        """The written `part_path(file_id)` fsync'd, renamed to its final name, and indexed."""
        tmp, final = self.part_path(file_id), self.path(file_id)
        try:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
                size = os.fstat(handle.fileno()).st_size
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _disk_error(exc, self.root) from None
        now = int(time.time())
        self._tx(("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)",
                  (file_id, owner, filename, purpose, size, now,
                   now + self.limits.retention_s if self.limits.retention_s else None)))
        return self.get_file(owner, file_id)

    def get_file(self, owner: str, file_id: str) -> dict | None:
        row = self._one("SELECT * FROM files WHERE id=? AND owner=?", (file_id, owner))
        return _file_object(row) if row else None

    def usage(self, owner: str) -> tuple[int, int]:
        """(files, bytes) the owner keeps here, outputs included."""
        row = self._one("SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM files WHERE owner=?", (owner,))
        return row["n"], row["b"]

    def list_files(self, owner: str, purpose: str | None = None) -> list[dict]:
        return self.files_page(owner, purpose)[0]

    def files_page(self, owner: str, purpose: str | None = None, limit: int = 10_000, after: str | None = None,
                   order: str = "desc") -> tuple[list[dict], bool]:
        """One page, newest first (order "desc") or oldest first; `after` is the last id of the
        previous page (UnknownId if it is not one of the owner's files)."""
        start = None
        if after is not None:
            row = self._one("SELECT rowid FROM files WHERE id=? AND owner=?", (after, owner))
            if row is None:
                raise UnknownId(after)
            start = row["rowid"]
        beyond = "rowid < ?" if order == "desc" else "rowid > ?"
        rows = self._all(f"SELECT * FROM files WHERE owner=? AND (? IS NULL OR purpose=?) AND (? IS NULL OR {beyond}) "
                         f"ORDER BY rowid {'DESC' if order == 'desc' else 'ASC'} LIMIT ?",
                         (owner, purpose, purpose, start, start, limit + 1))
        return [_file_object(r) for r in rows[:limit]], len(rows) > limit

    def in_use(self, file_id: str) -> bool:
        """Whether a batch not yet ended reads this file."""
        return self._one(f"SELECT 1 FROM batches WHERE input_file_id=? AND {IN_ACTIVE}", (file_id, *ACTIVE)) is not None

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
                         f"(SELECT input_file_id FROM batches WHERE {IN_ACTIVE})", (now, *ACTIVE))
        for row in rows:
            self._tx(("DELETE FROM files WHERE id=?", (row["id"],)))
            self.path(row["id"]).unlink(missing_ok=True)
        return len(rows)

    # -- batches ----------------------------------------------------------------------------------
    def add_batch(self, owner: str, input_file_id: str, endpoint: str, window: str, metadata: dict | None) -> dict:
        batch_id = "batch_" + secrets.token_hex(12)
        now = int(time.time())
        with self._lock:   # the next seq and its row in one hold: no two batches share a seq
            seq = self._one("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM batches")["n"]
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
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page
        (UnknownId if it is not one of the owner's batches)."""
        start = None
        if after is not None:
            row = self._one("SELECT seq FROM batches WHERE id=? AND owner=?", (after, owner))
            if row is None:
                raise UnknownId(after)
            start = row["seq"]
        rows = self._all("SELECT * FROM batches WHERE owner=? AND (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                         (owner, start, start, limit + 1))
        return [batch_object(r) for r in rows[:limit]], len(rows) > limit

    def active(self) -> list[sqlite3.Row]:
        return self._all(f"SELECT * FROM batches WHERE {IN_ACTIVE} ORDER BY seq", ACTIVE)

    def active_count(self, owner: str) -> int:
        return self._one(f"SELECT COUNT(*) AS n FROM batches WHERE owner=? AND {IN_ACTIVE}", (owner, *ACTIVE))["n"]

    def oldest_active(self, owner: str) -> sqlite3.Row | None:
        return self._one(f"SELECT * FROM batches WHERE owner=? AND {IN_ACTIVE} ORDER BY seq LIMIT 1", (owner, *ACTIVE))

    def set_status(self, batch_id: str, status: str, *, only_from: tuple = (), **fields) -> bool:
        """Move a batch to `status` (stamping `<status>_at`), optionally only from given statuses."""
        stamp = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
                 "cancelling": "cancelling_at", "in_progress": "in_progress_at",
                 "finalizing": "finalizing_at"}.get(status)
        values = {"status": status, **fields}
        if stamp:
            values[stamp] = int(time.time())
        if not all(name in COLUMNS for name in values):
            raise ValueError(f"not a column of batches: {sorted(set(values) - COLUMNS)}")
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
        self.save_results(batch_id, [(line, custom_id, ok, body)])

    def save_results(self, batch_id: str, results: list[tuple[int, str | None, bool, dict]]) -> None:
        """Several lines' results (line, custom_id, ok, body) and the counters in one transaction:
        all of them stored, or none (one fsync for a run of error lines, not one each)."""
        ok = sum(1 for r in results if r[2])
        self._tx(*[("INSERT INTO results VALUES (?,?,?,?,?)",
                    (batch_id, line, custom_id, int(good), json.dumps(body, ensure_ascii=False)))
                   for line, custom_id, good, body in results],
                 ("UPDATE batches SET completed = completed + ?, failed = failed + ? WHERE id=?",
                  (ok, len(results) - ok, batch_id)))

    def write_results(self, batch_id: str, ok: bool, handle) -> int:
        """The batch's results of one kind (ok or not), in line order, written to `handle` a page
        at a time (the lock is let go between pages); how many were written."""
        after, written = 0, 0
        while True:
            rows = self._all("SELECT line, body FROM results WHERE batch_id=? AND ok=? AND line > ? "
                             "ORDER BY line LIMIT ?", (batch_id, int(ok), after, PAGE_ROWS))
            if not rows:
                return written
            handle.write("".join(r["body"] + "\n" for r in rows).encode())
            after, written = rows[-1]["line"], written + len(rows)


def _disk_error(exc: OSError, root: Path) -> Exception:
    if exc.errno == errno.ENOSPC:
        return DiskFull("the server's disk is full", f"the disk under {root} is full")
    return exc


COLUMNS = {"status", "total", "completed", "failed", "errors", "output_file_id", "error_file_id", *TIMESTAMPS}


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
