"""Where a checkpoint comes from: a local folder or a hub repo (through huggingface-hub's cache), which
of its files conversion needs, and the pickle policy.

Hub access is huggingface-hub's own: `HfApi().model_info` to learn the commit and file sizes,
`snapshot_download` to fetch (its cache, HF_HOME, tokens and HF_HUB_OFFLINE all apply), and
`try_to_load_from_cache` to find a cached snapshot when the hub cannot be reached.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from prom_local.errors import ConvertError, DownloadError
from prom_local.store.hub import hub_error, is_connection_error, offline_message

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
SAFE_WEIGHTS = ("*.safetensors", "model.safetensors.index.json")
# torch.load of these runs whatever the pickle says; only with --allow-pickle.
PICKLE_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SAMPLE = 1 << 20


@dataclass
class Source:
    kind: str                      # "local" or "hub"
    spec: str                      # as the user wrote it
    fingerprint: str               # what resume compares: same fingerprint = same weights
    path: Path | None = None       # the checkpoint folder (hub: once downloaded)
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None
    online: bool = False           # hub reachable when planned
    files: dict[str, int] = field(default_factory=dict)  # hub files to fetch -> size (when online)

    def describe(self) -> dict:
        if self.kind == "hub":
            return {"kind": "hub", "repo": self.repo, "revision": self.revision, "commit": self.commit,
                    "fingerprint": self.fingerprint}
        return {"kind": "local", "path": str(self.path), "fingerprint": self.fingerprint}

    @property
    def label(self) -> str:
        if self.kind == "hub":
            return f"{self.repo}@{(self.commit or self.revision or '?')[:12]}"
        return str(self.path)

    @property
    def model_name(self) -> str:
        """The checkpoint's own name (for GGUF general.name and the default store name)."""
        if self.repo:
            return self.repo.split("/")[-1]
        assert self.path is not None
        # A folder inside the HF cache (models--org--name/snapshots/<commit>) is named by its repo.
        if _COMMIT.match(self.path.name) and self.path.parent.name == "snapshots":
            return self.path.parent.parent.name.split("--")[-1]
        return self.path.name


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def identify(spec: str, *, revision: str | None = None, allow_pickle: bool = False) -> Source:
    """A local folder (checked now) or a hub repo (its commit and file list, without downloading)."""
    if is_hub_id(spec):
        return _plan_hub(spec, revision or "main", allow_pickle)
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise ConvertError(f"{spec}: no such folder, and not a hub repo id (expected org/name)")
    if revision:
        raise ConvertError(f"--revision {revision}: only applies to a hub repo, not to the folder {folder}")
    folder = folder.resolve()
    check_folder(folder, allow_pickle=allow_pickle)
    return Source("local", spec, fingerprint=fingerprint_folder(folder, allow_pickle), path=folder)


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickled = sorted(p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in PICKLE_WEIGHTS)
                     and p.suffix == ".bin")
    if pickled and not allow_pickle:
        raise _pickle_refused(str(folder), [p.name for p in pickled])
    return pickled


def _pickle_refused(where: str, names: list[str]) -> ConvertError:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return ConvertError(f"{where}: the weights are pickled PyTorch files ({shown}) and there are no "
                        ".safetensors; loading a pickle can run arbitrary code. If you trust this "
                        "checkpoint, pass --allow-pickle")


def check_folder(folder: Path, *, allow_pickle: bool) -> None:
    """What the converter needs: config, tokenizer, every weight shard. Errors name the missing file."""
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a folder")
    if not (folder / "config.json").is_file():
        raise ConvertError(f"{folder}: no config.json, so this is not a Hugging Face checkpoint folder")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ConvertError(f"{folder}: no tokenizer.json or tokenizer.model")
    weights = weight_files(folder, allow_pickle)
    if not weights:
        raise ConvertError(f"{folder}: no weights (*.safetensors"
                           + (", or pytorch_model*.bin with --allow-pickle" if not allow_pickle else "") + ")")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file() and (index_name.startswith("model.safetensors") or weights[0].suffix == ".bin"):
            try:
                shards = set(json.loads(index.read_text("utf-8"))["weight_map"].values())
            except (ValueError, KeyError) as exc:
                raise ConvertError(f"{index}: unreadable shard index ({exc})") from None
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise ConvertError(f"{folder}: shard(s) listed in {index_name} are missing: {', '.join(missing)} "
                                   "(an interrupted download?)")
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path)


def _check_safetensors(path: Path) -> None:
    """A truncated shard fails here with its name, rather than deep inside the converter."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            if n <= 0 or n > min(size - 8, 100 << 20):
                raise ValueError("bad header length")
            header = json.loads(handle.read(n))
        end = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConvertError(f"{path}: not a valid safetensors file ({exc})") from None
    if 8 + n + end > size:
        raise ConvertError(f"{path}: truncated ({size:,} bytes, its header describes {8 + n + end:,})")


def fingerprint_folder(folder: Path, allow_pickle: bool) -> str:
    """Cheap identity of a checkpoint folder: names, sizes, the small files in full and 1 MiB samples
    (head, middle, tail) of each weight file. Reading 16 GB to tell whether to resume would defeat it."""
    h = hashlib.sha256()
    names = [n for n in CONFIG_FILES + TOKENIZER_FILES if (folder / n).is_file()]
    paths = [folder / n for n in names] + weight_files(folder, allow_pickle)
    for path in paths:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 64 * _SAMPLE:
                h.update(handle.read())
                continue
            for offset in (0, size // 2, size - _SAMPLE):
                handle.seek(offset)
                h.update(handle.read(_SAMPLE))
    return "local:" + h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The hub.

def _wanted(name: str, patterns: tuple[str, ...]) -> bool:
    return "/" not in name and any(fnmatch.fnmatch(name, pat) for pat in patterns)


def _plan_hub(repo: str, revision: str, allow_pickle: bool) -> Source:
    from huggingface_hub import HfApi, try_to_load_from_cache

    what = f"{repo}@{revision}"
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:
        if not is_connection_error(exc):
            raise (hub_error(exc, what) or exc) from None
        cached = try_to_load_from_cache(repo, "config.json", revision=revision)
        if not isinstance(cached, str):
            raise DownloadError(offline_message(what, exc)) from None
        commit = Path(cached).parent.name
        return Source("hub", repo, fingerprint=f"hub:{repo}@{commit}", repo=repo, revision=revision,
                      commit=commit, online=False)
    sizes = {s.rfilename: (s.lfs.size if s.lfs is not None else s.size) or 0 for s in info.siblings or []}
    if "config.json" not in sizes:
        raise ConvertError(f"{what}: the repo has no config.json, so it is not a transformers checkpoint")
    wanted = CONFIG_FILES + TOKENIZER_FILES + SAFE_WEIGHTS
    if not any(_wanted(n, ("*.safetensors",)) for n in sizes):
        pickled = [n for n in sizes if _wanted(n, PICKLE_WEIGHTS) and n.endswith(".bin")]
        if not pickled:
            raise ConvertError(f"{what}: the repo has no *.safetensors weights")
        if not allow_pickle:
            raise _pickle_refused(what, pickled)
        wanted += PICKLE_WEIGHTS
    files = {n: size for n, size in sizes.items() if _wanted(n, wanted)}
    return Source("hub", repo, fingerprint=f"hub:{repo}@{info.sha}", repo=repo, revision=revision,
                  commit=info.sha, online=True, files=files)


def bytes_to_download(source: Source) -> int:
    """Bytes of the planned files that the HF cache does not hold yet (0 when offline: nothing will be)."""
    from huggingface_hub import try_to_load_from_cache

    return sum(size for name, size in source.files.items()
               if not isinstance(try_to_load_from_cache(source.repo, name, revision=source.commit), str))


def download(source: Source, *, allow_pickle: bool) -> Path:
    """Fetch what conversion needs into the HF cache (a no-op for cached files) -> the snapshot folder."""
    from huggingface_hub import snapshot_download

    assert source.kind == "hub" and source.repo and source.commit
    patterns = list(source.files) if source.files else list(
        CONFIG_FILES + TOKENIZER_FILES + SAFE_WEIGHTS + (PICKLE_WEIGHTS if allow_pickle else ()))
    what = f"{source.repo}@{source.commit[:12]}"
    try:
        # Offline (planning could not reach the hub): the cache only, without connection retries.
        folder = Path(snapshot_download(source.repo, revision=source.commit, allow_patterns=patterns,
                                        local_files_only=not source.online))
    except Exception as exc:
        name = type(exc).__name__
        if name in ("LocalEntryNotFoundError", "IncompleteSnapshotError") or is_connection_error(exc):
            detail = f" ({exc})" if name == "IncompleteSnapshotError" else ""
            raise DownloadError(offline_message(what, exc) + detail) from None
        raise (hub_error(exc, what) or exc) from None
    check_folder(folder, allow_pickle=allow_pickle)
    source.path = folder
    return folder
