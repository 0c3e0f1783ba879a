"""OpenAI's Batch API on `prom-local serve`: durable files and batches, run on the shared engine.

  store.py    the SQLite index (WAL) and the files on disk; the exactly-once point per line
  lines.py    an input file -> lines to run or per-line errors
  calls.py    one line through the same handler an HTTP request of its endpoint reaches
  runner.py   the worker: batches oldest first, yielding slots to interactive requests
  routes.py   /v1/files and /v1/batches, per owner (the API key's name)
"""

from .routes import BatchApi
from .runner import BatchConfig

__all__ = ["BatchApi", "BatchConfig"]
