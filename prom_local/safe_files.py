"""Files created beside user data (temp files, lock files) without following symlinks: a symlink
planted at a fixed name must not turn a write into an overwrite of its target.

`create_unique` makes a new file under a random name with O_EXCL | O_NOFOLLOW (an existing file
or link at the name is never opened), with `mode` filtered by the process umask as for any file
(no umask juggling, which is process-wide and not thread-safe); `replace_durably` fsyncs the file
before renaming it over the target, then the folder, so a power cut leaves the old or the new.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def create_unique(folder: Path, prefix: str, suffix: str = ".tmp", mode: int = 0o666) -> tuple[int, Path]:
    """(an fd open for writing, its path): a new file in `folder` that nobody else has."""
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name after 100 tries")


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink at `path` itself (OSError ELOOP)."""
    return os.open(path, flags | NOFOLLOW | CLOEXEC, mode)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_durably(fd: int, tmp: Path, target: Path) -> None:
    """fsync the temp file's fd, close it, rename it over target, and fsync the folder."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:   # a platform or file system without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
