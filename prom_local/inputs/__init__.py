"""Input files -> records, behind one `read_records`: prom-local's JSONL (jsonl.py) and
prometheus-eval's benchmark data files (benchmark_files.py) and KUDGE's CSVs (kudge_files.py).

Above judging/: readers turn files into the records judging/ defines; nothing below imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..judging.records import RECORD_TYPES, AnyRecord
from . import benchmark_files, kudge_files
from .jsonl import read_jsonl


def read_records(path: str | Path) -> Iterator[AnyRecord | InputError]:
    """Yield a record or an InputError for every record of an input file: a JSONL file (`-` =
    stdin), one line each, a prometheus-eval benchmark file, one case each, or a KUDGE CSV, one
    row each."""
    if kudge_files.detect(path):
        yield from kudge_files.read_kudge(path)
    elif benchmark_files.detect(path):
        yield from benchmark_files.read_benchmark(path)
    else:
        yield from read_jsonl(path)


def valid_records(path: str | Path) -> list[AnyRecord]:
    """The file's records (relative ones too), its bad lines left out: what a context is sized for
    (doctor, the TUI) before the run that reports those lines."""
    return [item for item in read_records(path) if isinstance(item, RECORD_TYPES)]
