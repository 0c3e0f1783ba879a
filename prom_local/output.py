"""The results file: one JSON row per input record, appended durably so a killed run resumes.

Every row is written with one write() of a complete line, then flushed and fsynced. A kill can
therefore only leave a torn *last* line; on resume it is cut off (and the record redone), so the
file never holds a duplicate or a gap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import OutputError


@dataclass
class ResumeState:
    done_ids: set[str] = field(default_factory=set)
    rows: int = 0
    repaired_bytes: int = 0   # a torn last line cut off


def load_existing(path: Path) -> ResumeState:
    """Ids already written to an output file, cutting off a torn last line left by a kill."""
    state = ResumeState()
    if not path.exists():
        return state
    good_end = 0
    with path.open("rb") as handle:
        offset = 0
        for raw in handle:
            end = offset + len(raw)
            if not raw.endswith(b"\n"):
                break  # torn write: everything from `offset` on is discarded
            offset = end
            if not raw.strip():
                good_end = end
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                raise OutputError(f"{path}: line {state.rows + 1} is not valid JSON; it is not a "
                                  "prom-local output file, or was edited. Use a new -o file.") from None
            if not isinstance(row, dict) or "id" not in row:
                raise OutputError(f"{path}: line {state.rows + 1} has no 'id': not a prom-local output file")
            state.done_ids.add(str(row["id"]))
            state.rows += 1
            good_end = end
    size = path.stat().st_size
    if size > good_end:
        state.repaired_bytes = size - good_end
        with path.open("r+b") as handle:
            handle.truncate(good_end)
            handle.flush()
            os.fsync(handle.fileno())
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
        except json.JSONDecodeError:
            keep.append(raw)   # a torn last line: load_existing deals with it
            continue
        if isinstance(row, dict) and row.get("error"):
            dropped += 1
        else:
            keep.append(raw)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            handle.writelines(keep)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return dropped


class ResultWriter:
    """Append rows to a JSONL file (or stdout with path '-'), each one durable before the next."""

    def __init__(self, path: str | Path, *, durable: bool = True):
        self.path = None if str(path) == "-" else Path(path)
        self.durable = durable and self.path is not None
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> "ResultWriter":
        if self.path is None:
            import sys
            self._handle = sys.stdout.buffer
        else:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        return self

    def write(self, row: dict) -> None:
        assert self._handle is not None, "ResultWriter used outside `with`"
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        self._handle.write(data)
        self._handle.flush()
        if self.durable:
            os.fsync(self._handle.fileno())

    def __exit__(self, *exc) -> None:
        if self._handle is not None and self.path is not None:
            self._handle.close()
        self._handle = None


def read_rows(path: str | Path, *, skip_torn_tail: bool = False) -> list[dict]:
    """All rows of a results file, for reports; names the line of any row that is not JSON.

    `skip_torn_tail` ignores an unfinished last line (a run killed mid-write, or one still
    writing), which the next `score` run cuts off anyway; read-only viewers want that.
    """
    rows = []
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise OutputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise OutputError(f"{p}: is a directory, expected a results JSONL file") from None
    if skip_torn_tail:
        # Cut at the byte level: a torn line may also end inside a multi-byte character.
        data = data[: data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OutputError(f"{p}: not UTF-8 text ({exc.reason}); not a prom-local output file") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise OutputError(f"{p}:{n}: expected a JSON object")
        rows.append(row)
    return rows
