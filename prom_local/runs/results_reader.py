"""Reading results files, for `report`, `compare`, the end-of-run summary and the TUI's review.

Readers take no lock (writing is results_sink.py's job). A file written by prom-local holds one row
per id; one with an id written more than once (two runs that appended to the same file before
prom-local locked results files, or files joined by hand) is read with each id counted once, its
first row kept, as a resumed run treats it, and the repeats reported so the caller can say so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError


def read_rows(path: str | Path, *, skip_torn_tail: bool = False) -> list[dict]:
    """All rows of a results file, as written; names the line of any row that is not JSON.

    `skip_torn_tail` ignores an unfinished last line (a run killed mid-write, or one still
    writing), which the next `score` run cuts off anyway; read-only viewers want that.
    """
    return [row for _, row in _numbered_rows(Path(path), skip_torn_tail)]


def _numbered_rows(p: Path, skip_torn_tail: bool) -> list[tuple[int, dict]]:
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise OutputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise OutputError(f"{p}: is a directory, expected a results JSONL file") from None
    except OSError as exc:
        raise OutputError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    if skip_torn_tail:
        # Cut at the byte level: a torn line may also end inside a multi-byte character.
        data = data[: data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OutputError(f"{p}: not UTF-8 text ({exc.reason}); not a prom-local output file") from None
    rows = []
    # Split on "\n" only: rows are written with ensure_ascii=False, so a feedback may hold U+2028
    # and friends, which str.splitlines() would treat as line ends.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise OutputError(f"{p}:{n}: expected a JSON object")
        rows.append((n, row))
    return rows


@dataclass
class Results:
    """A results file as readers see it: one row per id, and the ids that were written more than once."""

    path: Path
    rows: list[dict]
    repeated: dict[str, list[int]] = field(default_factory=dict)   # id -> every line it is on

    @property
    def extra_rows(self) -> int:
        """Rows left out because their id came earlier in the file."""
        return sum(len(lines) - 1 for lines in self.repeated.values())

    def warning(self) -> str | None:
        if not self.repeated:
            return None
        first_id, lines = next(iter(self.repeated.items()))
        where = ", ".join(map(str, lines[:4])) + (", …" if len(lines) > 4 else "")
        return (f"{self.path}: {len(self.repeated)} id(s) appear more than once (e.g. {first_id!r} on lines "
                f"{where}); each is counted once, by its first row, and {self.extra_rows} later row(s) "
                "are left out")


def read_results(path: str | Path, *, skip_torn_tail: bool = False) -> Results:
    """The rows of a results file, each id once (its first row); repeats are listed in `repeated`."""
    p = Path(path)
    lines: dict[str, list[int]] = {}
    kept: list[dict] = []
    for n, row in _numbered_rows(p, skip_torn_tail):
        key = str(row.get("id"))
        if key not in lines:
            lines[key] = []
            kept.append(row)
        lines[key].append(n)
    return Results(p, kept, {key: at for key, at in lines.items() if len(at) > 1})
