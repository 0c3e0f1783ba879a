"""The Batch API's settings (serve's --data-dir and --batch-* options), apart from the code that uses
them, so that ServeConfig can name the type without importing the Batch API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BatchConfig:
    data_dir: Path
    max_upload_bytes: int = 200 << 20
    max_lines: int = 50_000
    min_free_bytes: int = 64 << 20
    retention_days: float = 30.0
    batch_slots: int | None = None     # None: --parallel minus one, at least one
    poll_s: float = 2.0                # how often a paused batch re-checks the disk, and expiry runs
    # Per API key, each 429 past it. Active batches: OpenAI's own kind of queue bound, and the one
    # that matters for fairness (a key's batches run one at a time, so more only wait longer).
    max_active: int = 100
    # Files kept: 100 active batches leave up to 300 (input, output, errors), with room for their
    # history under the 30-day retention; it also bounds what one key's list and expiry scans cost.
    max_files: int = 1000
    # Bytes kept: 50 uploads of the largest size; --batch-min-free-mib guards the disk as a whole,
    # this keeps one key from taking the whole of a shared disk from the others first.
    max_key_bytes: int = 10 << 30
    # Uploads at once: each holds a connection, a worker thread now and then, ~1 MiB of buffer and
    # a partial file; three let a client overlap a few without one key filling the connections.
    max_uploads: int = 3
