"""Input files -> records, behind one `read_records`: prom-local's JSONL (jsonl.py) and
prometheus-eval's benchmark data files (benchmark_files.py).

Above judging/: readers turn files into the records judging/ defines; nothing below imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..judging.records import AnyRecord
from . import benchmark_files
from .jsonl import read_jsonl


def read_records(path: str | Path) -> Iterator[AnyRecord | InputError]:
    """Yield a record or an InputError for every record of an input file: a JSONL file (`-` =
    stdin), one line each, or a prometheus-eval benchmark file, one case each."""
    if benchmark_files.detect(path):
        yield from benchmark_files.read_benchmark(path)
    else:
        yield from read_jsonl(path)
