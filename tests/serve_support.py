"""A real `prom-local serve` process on loopback, on a port the OS picked, for tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, wrap: tuple[str, ...] = ()):
        # wrap: a command the server runs under (e.g. `prlimit --as=...`).
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "prom_local", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.lines: list[str] = []
        for line in self.proc.stdout:  # the first line names the port (or the process failed)
            self.lines.append(line)
            found = re.search(r"listening on (https?://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError("server did not start:\n" + self.log)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 300) -> dict:
        """Poll GET /health until 200 (the model is loaded); fail at once if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                response = httpx.get(self.url + "/health", timeout=5)
                if response.status_code == 200:
                    return response.json()
                assert response.status_code == 503, response.text
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # poll interval, not a wait for an event
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
