"""Child processes of the pipeline: their exit status and their own peak memory."""

from __future__ import annotations

import os
import subprocess
import sys


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
