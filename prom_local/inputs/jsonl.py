"""prom-local's own input format: JSONL, one record per line (`-` = stdin).

One bad line never stops the others: `read_jsonl` yields either a record or an `InputError` for
every non-blank line, in order, so a batch can write an error row for it and go on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import InputError
from ..judging.records import AnyRecord, record_from_mapping


def _open(path: str | Path) -> tuple[BinaryIO, str, bool]:
    if str(path) == "-":
        return sys.stdin.buffer, "<stdin>", False
    p = Path(path)
    try:
        return p.open("rb"), str(p), True
    except FileNotFoundError:
        raise InputError("no such file", source=str(p)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a JSONL file", source=str(p)) from None
    except OSError as exc:   # permission denied, and the like
        raise InputError(f"cannot read it: {exc.strerror or exc}", source=str(p)) from None


def read_jsonl(path: str | Path) -> Iterator[AnyRecord | InputError]:
    """Yield a Record or an InputError for every non-blank line of a JSONL file (`-` = stdin)."""
    handle, source, close = _open(path)
    try:
        # Lines are decoded one by one, so a line of bad bytes is an error for that line only.
        for line_no, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield InputError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", source=source,
                                 line=line_no)
                continue
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", source=source, line=line_no)
                continue
            try:
                yield record_from_mapping(data, line=line_no, source=source)
            except InputError as err:
                rid = data.get("id") if isinstance(data, dict) else None
                if isinstance(rid, (str, int)) and not isinstance(rid, bool):
                    err.record_id = str(rid)
                yield err
    finally:
        if close:
            handle.close()
