"""`prom-local pull kudge`: KUDGE's CSV files into a local cache, checked against the pinned commit.

KUDGE's README documents its data as the files under data/ of github.com/guijinSON/kudge (no hub
dataset), so that is where they come from: raw files at one pinned commit, each checked against its
git blob id at that commit (sha1 of "blob <size>\\0" + content), which is how git itself names the
file; a file that does not match is never kept.

The rules are the model pull's (pull.py): the cache is looked in first; HF_HUB_OFFLINE=1 means the
cache only; a file neither cached nor downloadable is a DownloadError (exit 6) that says what to do;
a mismatch is an IntegrityError (exit 7). Downloads are bounded before any work: the known size (or
a cap for files this repository has no copy of) against Content-Length, and again while streaming.
`--from` takes another base URL (a mirror) laid out like the repository (data/<file>).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DownloadError, IntegrityError, UsageError

REPOSITORY = "guijinSON/kudge"
COMMIT = "09e13166f9f6a227cabaf82b177342a53c507d40"
DEFAULT_BASE = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}"
_CAP = 64 << 20   # no KUDGE file is near this; bounds a file whose size we do not know


@dataclass(frozen=True)
class KudgeFile:
    name: str          # what the user types: pointwise, pointwise-falseinfo, ...
    path: str          # in the repository
    blob: str          # git blob id at COMMIT
    size: int | None   # bytes, where known


# From `git ls-tree -l` of the repository at COMMIT.
FILES = {f.name: f for f in (
    KudgeFile("pointwise", "data/k2-eval-pointwise.csv", "2b655e11fff9f3aade7df379c3e242e5f6618524", None),
    KudgeFile("pointwise-falseinfo", "data/k2-eval-pointwise-falseinfo.csv",
              "13b94a3bedf783bfe3d6b65bdac265d714ce4f82", 654076),
    KudgeFile("pairwise", "data/k2-eval-pairwise.csv", "14bf3d93cb910403abc48f9e8b0d1deeca31e065", None),
    KudgeFile("pairwise-falseinfo", "data/k2-eval-pairwise-falseinfo.csv",
              "2dc9dc6815aca751a9e9f214b1171d353519a3b6", 674491),
    KudgeFile("challenge", "data/kudge-challenge.csv", "141fe51ab60a45ccae68e75cd4e8b030c4fa4f51", None),
)}
DEFAULT_FILES = ("pointwise", "pointwise-falseinfo")


@dataclass
class Pulled:
    name: str
    path: Path
    blob: str
    how: str   # "cached" (already there and intact) or "downloaded"

    def as_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "git_blob": self.blob, "how": self.how,
                "source": f"{REPOSITORY}@{COMMIT}/{FILES[self.name].path}"}


def cache_dir() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("prom-local") / "kudge" / COMMIT


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def offline() -> bool:
    """huggingface-hub's switch, so one setting keeps every pull off the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve(names: list[str]) -> list[KudgeFile]:
    chosen = list(FILES) if names == ["all"] else (names or list(DEFAULT_FILES))
    unknown = [n for n in chosen if n not in FILES]
    if unknown:
        raise UsageError(f"no KUDGE file {unknown[0]!r} (known: {', '.join(FILES)}, or all)")
    return [FILES[n] for n in chosen]


def pull_kudge(names: list[str], *, base: str | None = None, force: bool = False) -> list[Pulled]:
    root = cache_dir()
    done = []
    for spec in resolve(names):
        dest = root / Path(spec.path).name
        if dest.exists() and not force:
            data = dest.read_bytes()
            if git_blob_id(data) == spec.blob:
                done.append(Pulled(spec.name, dest, spec.blob, "cached"))
                continue
            # A damaged cache entry is downloaded again, as hf_hub_download would.
        if offline():
            raise DownloadError(f"{REPOSITORY}@{COMMIT[:12]}/{spec.path}: offline mode is on (HF_HUB_OFFLINE=1), "
                                f"and it is not in the cache ({root}). Unset HF_HUB_OFFLINE to download it, "
                                "or give the CSV's path to score instead")
        data = _download(f"{(base or DEFAULT_BASE).rstrip('/')}/{spec.path}", spec)
        blob = git_blob_id(data)
        if blob != spec.blob:
            raise IntegrityError(f"{spec.path}: git blob id {blob}, but the repository has {spec.blob} at "
                                 f"{COMMIT[:12]}; the download is damaged or not KUDGE's file. Nothing was kept")
        root.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        partial.write_bytes(data)
        partial.replace(dest)   # whole or not at all
        done.append(Pulled(spec.name, dest, spec.blob, "downloaded"))
    return done


def _download(url: str, spec: KudgeFile) -> bytes:
    import httpx

    limit = spec.size or _CAP
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadError(f"{url}: the server answered {response.status_code} {response.reason_phrase}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise IntegrityError(f"{url}: {int(declared):,} bytes, more than the {limit:,} expected; not read")
            chunks, total = [], 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise IntegrityError(f"{url}: more than the {limit:,} bytes expected; stopped reading")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise DownloadError(f"{url}: cannot download it ({type(exc).__name__}: {exc}). Check the network and "
                            f"retry, or give the CSV's path to score instead (the cache is {cache_dir()})") from None
    return b"".join(chunks)
