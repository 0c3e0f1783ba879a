"""The one writer of a results file: every run that writes rows (`score`, the TUI's batch screen, the
driver of `score --ray`) goes through a ResultsSink, so the rules below hold whoever writes.

- One writer per file. The sink takes an exclusive `flock` on a lock file beside the results
  (`OUT.jsonl.lock`, holding the writer's pid) for the whole run, and a second writer is refused at
  once with ResultsLocked. The OS drops the lock when the process ends however it ends, so a
  `kill -9` leaves no stale lock: the next run takes the lock file over.
- Resume. Ids already in the file are done; a torn last line (a kill inside a write) is cut off so
  its record is graded again. `--retry-errors` first removes error rows, by an atomic rewrite done
  while holding the lock.
- Durable append. Each row is one write() of a complete line, then fsync, so a kill can only tear
  the last line. When a write fails (disk full, file too large, I/O error) the file is cut back to
  its last complete row and the error says how many rows are safe: nothing is torn, a re-run resumes.
- Run statistics are counted here, once, for every writer.

Readers (`report`, `compare`, the TUI's review) take no lock: rows are appended whole, so a reader
sees complete rows plus at most one unfinished last line (see results_reader.read_results).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError, ResultsLocked
from ..judging.grades import Grade
from ..safe_files import create_unique, open_nofollow, replace_durably, write_all


@dataclass
class RunStats:
    """What one run did; the same figures whichever writer ran it."""

    total_seen: int = 0        # input records read (including those already done)
    skipped: int = 0           # already in the output file
    graded: int = 0
    errors: int = 0
    forced: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    repaired_bytes: int = 0
    retried: int = 0           # error rows removed by --retry-errors

    def count(self, grade: Grade) -> None:
        reused = grade.extra.get("reused_prompt_tokens", 0)
        self.graded += 1
        self.errors += grade.error is not None
        self.forced += grade.forced
        self.prompt_tokens += grade.prompt_tokens - reused
        self.reused_prompt_tokens += reused
        self.completion_tokens += grade.completion_tokens

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def tokens_per_second(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def generated_per_second(self) -> float:
        return self.completion_tokens / self.elapsed if self.elapsed > 0 else 0.0


def _os_error(path: Path, exc: OSError, doing: str = "") -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"{path}: {doing + ': ' if doing else ''}{reason}")


# ----------------------------------------------------------------------------------------------
# The lock.

def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class ResultsLock:
    """An exclusive flock on `OUT.lock`, holding the owner's pid so a refused writer can name it."""

    def __init__(self, results: Path):
        self.results = results
        self.path = lock_path(results)
        self.fd: int | None = None

    def acquire(self) -> "ResultsLock":
        while True:
            try:
                # O_NOFOLLOW: a symlink planted at OUT.lock must not make us truncate its target.
                fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _os_error(self.path, exc, "the lock file is a symlink; remove it") from None
                raise _os_error(self.path, exc, "cannot create the lock file beside the results") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise ResultsLocked(str(self.results), pid) from None
            except OSError as exc:  # e.g. a file system without locks
                os.close(fd)
                raise _os_error(self.path, exc, "cannot lock") from None
            # A holder unlinks the file as it lets go; if that happened between our open and our
            # flock, we hold a lock on a file nobody else will open: start again on the new one.
            try:
                same = os.lstat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only for the message a refused writer prints; the lock is what counts
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlink while still holding the lock, so that no one can take a lock on a file that is gone.
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None   # the holder has not written it yet


# ----------------------------------------------------------------------------------------------
# Resume state.

@dataclass
class ResumeState:
    done_ids: set[str] = field(default_factory=set)
    rows: int = 0
    good_size: int = 0         # bytes of complete rows
    repaired_bytes: int = 0    # a torn last line cut off


def scan_existing(path: Path) -> ResumeState:
    """Ids already written to a results file and where its complete rows end; refuses a file
    that is not a prom-local results file rather than append to it."""
    state = ResumeState()
    if not path.exists():
        return state
    with path.open("rb") as handle:
        offset = 0
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn write: everything from `offset` on is discarded
            offset += len(raw)
            if not raw.strip():
                state.good_size = offset
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise OutputError(f"{path}: line {state.rows + 1} is not valid JSON; it is not a "
                                  "prom-local output file, or was edited. Use a new -o file.") from None
            if not isinstance(row, dict) or "id" not in row:
                raise OutputError(f"{path}: line {state.rows + 1} has no 'id': not a prom-local output file")
            state.done_ids.add(str(row["id"]))
            state.rows += 1
            state.good_size = offset
    state.repaired_bytes = path.stat().st_size - state.good_size
    return state


def drop_error_rows(path: Path) -> int:
    """Remove error rows so their records are graded again (after the input was fixed).
    The file is replaced atomically: a kill mid-way leaves the old file, never a half-written one."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for raw in path.read_bytes().splitlines(keepends=True):
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            keep.append(raw)   # a torn last line: the scan after this deals with it
            continue
        if isinstance(row, dict) and row.get("error"):
            dropped += 1
        else:
            keep.append(raw)
    if dropped:
        tmp = None
        try:
            # A new file under a random name (never a planted symlink), with the results' own mode.
            fd, tmp = create_unique(path.parent, f".{path.name}.", mode=0o600)
            try:
                os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
                write_all(fd, b"".join(keep))
            except OSError:
                os.close(fd)
                raise
            replace_durably(fd, tmp, path)
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise _os_error(path, exc, "--retry-errors could not rewrite it (the file is unchanged)") from None
    return dropped


# ----------------------------------------------------------------------------------------------
# The sink.

class ResultsSink:
    """Owns one results file for a run (or stdout, with path '-': no lock, no resume).

    >>> with ResultsSink("out.jsonl") as sink:      # ResultsLocked if another run writes it
    ...     todo = [r for r in records if r.id not in sink.done_ids]
    ...     for grade in judge.grade_stream(todo):
    ...         sink.write(grade)
    >>> sink.stats.graded
    """

    def __init__(self, path: str | Path, *, retry_errors: bool = False, durable: bool = True):
        self.path = None if str(path) == "-" else Path(path)
        self.retry_errors = retry_errors
        self.durable = durable and self.path is not None
        self.stats = RunStats()
        self.done_ids: set[str] = set()
        self.rows = 0              # complete rows in the file (resumed ones included)
        self._lock: ResultsLock | None = None
        self._fd: int | None = None
        self._good_size = 0
        self._failed: OutputError | None = None

    @property
    def name(self) -> str:
        return "<stdout>" if self.path is None else str(self.path)

    def open(self) -> "ResultsSink":
        if self.path is None:
            return self
        path = self.path
        if path.is_dir():
            raise OutputError(f"{path}: is a directory; give the results a file name, e.g. {path / 'results.jsonl'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputError(f"{path}: a folder on its path is a file, not a folder") from None
        except OSError as exc:
            raise _os_error(path.parent, exc, "cannot create the folder for the results") from None
        self._lock = ResultsLock(path).acquire()
        try:
            if self.retry_errors:
                self.stats.retried = drop_error_rows(path)
            # A new file is created by the first row, so a run that stops before any (a model that
            # will not load) leaves nothing behind; the lock file already proved the folder writable.
            if path.exists():
                self._fd = self._open_for_append()
            state = scan_existing(path)
            if state.repaired_bytes:
                os.ftruncate(self._fd, state.good_size)
                os.fsync(self._fd)
        except OSError as exc:
            self.close()
            raise _os_error(path, exc) from None
        except BaseException:
            self.close()
            raise
        self.done_ids = state.done_ids
        self.rows = state.rows
        self._good_size = state.good_size
        self.stats.repaired_bytes = state.repaired_bytes
        return self

    def write(self, grade: Grade) -> None:
        """Append one row durably and count it; on failure the file keeps only complete rows."""
        if self._failed is not None:
            raise self._failed
        data = (json.dumps(grade.to_row(), ensure_ascii=False) + "\n").encode("utf-8")
        if self.path is None:
            self._write_stdout(data)
        else:
            self._append(data)
        self.rows += 1
        self.stats.count(grade)

    def _write_stdout(self, data: bytes) -> None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except BrokenPipeError:
            raise OutputError("<stdout>: closed by the reader (broken pipe)") from None

    def _append(self, data: bytes) -> None:
        assert self._lock is not None, "ResultsSink used before open()"
        view = memoryview(data)
        try:
            if self._fd is None:
                self._fd = self._open_for_append()
            while view:   # a short write (the file size limit reached mid-line) writes the rest next
                view = view[os.write(self._fd, view):]
            if self.durable:
                os.fsync(self._fd)
        except OSError as exc:
            self._failed = self._write_failed(exc)
            raise self._failed from None
        self._good_size += len(data)

    def _open_for_append(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _write_failed(self, exc: OSError) -> OutputError:
        if self._fd is None:   # the file could not even be created
            return _os_error(self.path, exc, "cannot create the results file")
        try:
            os.ftruncate(self._fd, self._good_size)   # shrinking needs no free space
            os.fsync(self._fd)
            torn = ""
        except OSError:
            torn = " plus a torn last line that the next run cuts off"
        what = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large"}.get(exc.errno, exc.strerror or str(exc))
        return OutputError(f"{self.path}: {what} while writing a row; the file holds {self.rows} complete "
                           f"rows ({self.stats.graded} written by this run){torn}. Free some space and re-run "
                           "the same command: it resumes after them.")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "ResultsSink":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
