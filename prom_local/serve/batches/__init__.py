"""OpenAI's Batch API on `prom-local serve`: durable files and batches, run on the shared engine.

  store.py    the SQLite index (WAL) and the files on disk; the exactly-once point per line
  upload.py   POST /v1/files' body streamed to disk, bounded while it arrives
  lines.py    an input file -> lines to run or per-line errors, a bounded line at a time
  calls.py    one line through its endpoint's core, the owner as an argument
  turns.py    engine slots for batch lines, round-robin over owners
  runner.py   the worker: each owner's batches oldest first, yielding slots to interactive requests
  routes.py   /v1/files and /v1/batches, per owner (the API key's name), with per-owner bounds
"""

from .routes import BatchApi
from .config import BatchConfig

__all__ = ["BatchApi", "BatchConfig"]
