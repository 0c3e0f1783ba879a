"""The one way convert/ runs a child process (the converter, the quantizer, the importance matrix):
its log followed line by line, its exit status, its own peak memory, and no half-written output
left behind when it fails or is interrupted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class ChildRun:
    status: int
    peak_rss_bytes: int | None
    seconds: float
    tail: list[str] = field(default_factory=list)   # the last lines of the log followed
    stdout: str = ""                                 # the child's stdout, when captured


def worker_command(module: str, *args: str) -> list[str]:
    """A command running `module._worker(args)` in a fresh Python. The child must import this very
    package (a checkout's or the installed one), ahead of anything named `convert` in the current
    directory, which `python -m` would put first."""
    pkg_root = str(Path(__file__).resolve().parent.parent)
    boot = (f"import sys; sys.path.insert(0, {pkg_root!r}); from {module} import _worker; "
            "sys.exit(_worker(sys.argv[1:]))")
    return [sys.executable, "-c", boot, *args]


def run_child(cmd: list[str], *, partial: Path, env: dict | None = None, merge_output: bool = False,
              capture_stdout: bool = False, on_line: Callable[[str], None] | None = None,
              keep: int = 40) -> ChildRun:
    """Run `cmd`, which writes `partial`, calling `on_line` with each line of its stderr (with
    `merge_output`: of its stdout and stderr together). Any exception here (Ctrl-C included) kills
    the child and removes `partial`. The caller checks `status`, then renames or removes `partial`."""
    started = time.perf_counter()
    stdout = subprocess.PIPE if merge_output or capture_stdout else subprocess.DEVNULL
    stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    tail: list[str] = []
    captured = ""
    try:
        followed = proc.stdout if merge_output else proc.stderr
        assert followed is not None
        for line in _lines(followed):
            tail.append(line)
            del tail[:-keep]
            if on_line is not None:
                on_line(line)
        if capture_stdout and not merge_output:
            assert proc.stdout is not None
            captured = proc.stdout.read().decode("utf-8", "replace")
        status, rss = wait_with_rusage(proc)
    except BaseException:
        proc.kill()
        wait_with_rusage(proc)
        partial.unlink(missing_ok=True)
        raise
    return ChildRun(status, rss, time.perf_counter() - started, tail, captured)


def _lines(stream):
    """Lines of the child's output, splitting on '\\r' too: tqdm redraws its bar with '\\r'."""
    read = getattr(stream, "read1", stream.read)
    buf = b""
    while chunk := read(65536):
        buf += chunk
        *lines, buf = re.split(rb"[\r\n]", buf)
        for line in lines:
            if line:
                yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def wait_with_rusage(proc: subprocess.Popen) -> tuple[int, int | None]:
    """Wait for `proc` and return (exit status, its peak RSS in bytes).

    wait4 gives the rusage of that one child; getrusage(RUSAGE_CHILDREN) would mix every child so far.
    """
    if proc.returncode is not None:
        return proc.returncode, None
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss is in KiB on Linux, in bytes on macOS.
        rss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
        return proc.returncode, rss
    return proc.wait(), None
