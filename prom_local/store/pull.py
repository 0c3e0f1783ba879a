"""`prom-local pull`: a ready GGUF from the hub into the store, sha256-verified, with a manifest entry.

Part of the library (not of convert/, which makes GGUFs from checkpoints) because a Ray worker pulls
a missing store model on its own node (backends/ray/worker.py); it needs huggingface-hub, never torch.

The file goes through huggingface-hub's cache (`hf_hub_download`: HF_HOME, tokens, resumable
downloads and HF_HUB_OFFLINE all apply) and is then hard-linked (or copied) into the store. The
expected sha256 is the hub's LFS sha256 from `HfApi().model_info(files_metadata=True)`; offline, the
cache's own record of it (the cached tree listing, or the blob's name, which is the ETag the hub
sent, i.e. the LFS sha256). Nothing appears in the store unless it matched.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest as mf
from ..errors import DownloadError, IntegrityError, ModelLoadError, ModelNotFound, PromLocalError
from .hub import hub_error, is_connection_error, offline_message
from ..engine.model_info import ftype_table, gguf_summary
from ..settings import DEFAULT_PROFILE
from .models import gguf_name, registry, split_spec, store_dir, validate_name
from .stages import Reporter, Stage, check_free, hash_with_progress, human

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class PullTarget:
    repo: str
    file: str
    name: str
    quant: str | None


@dataclass
class PullReport:
    name: str
    quant: str
    path: Path
    manifest_path: Path
    entry: dict
    stages: list[Stage] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "quant": self.quant, "path": str(self.path),
                "manifest": str(self.manifest_path), "entry": self.entry,
                "stages": [s.as_dict() for s in self.stages]}


def guess_quant(filename: str) -> str | None:
    """The llama.cpp type named in a GGUF file name ('...i1-Q4_K_M.gguf' -> 'Q4_K_M'), longest match."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".gguf")
    found = [t for t in ftype_table() if re.search(rf"(?:^|[._-]){re.escape(t)}(?:$|[._-])", stem, re.I)]
    return max(found, key=len) if found else None


def resolve_target(target: str, file: str | None, *, quant: str | None = None, name: str | None = None,
                   source_key: str | None = None) -> PullTarget:
    """`REPO FILE`, or a registry short name `NAME:QUANT` looked up in its `gguf_sources`."""
    if file is not None:
        if "/" not in target:
            raise PromLocalError(f"{target!r}: expected a hub repo id (org/name) before the file name")
        known = next((n for n, e in registry().items()
                      if any(s.get("repo", "").lower() == target.lower() for s in e.get("gguf_sources", {}).values())),
                     None)
        q = quant.upper() if quant else guess_quant(file)
        stem = file.rsplit("/", 1)[-1].removesuffix(".gguf")
        if q:
            stem = re.sub(rf"[._-]?{re.escape(q)}$", "", stem, flags=re.I)
        return PullTarget(target, file, validate_name(name or known or stem.strip("._-") or "model"), q)
    model, spec_quant = split_spec(target)
    entry = registry().get(model)
    sources = (entry or {}).get("gguf_sources") or {}
    if not sources:
        known = ", ".join(n for n, e in registry().items() if e.get("gguf_sources")) or "none"
        raise PromLocalError(f"{target!r}: not a registry model with GGUF sources (known: {known}); "
                             "or give a hub repo and a file: prom-local pull ORG/REPO FILE.gguf")
    q = (quant or spec_quant or entry.get("default_quant") or "").upper()
    if not q:
        raise PromLocalError(f"{target!r}: say which quantization, e.g. {model}:Q4_K_M")
    key = source_key or next(iter(sources))
    if key not in sources:
        raise PromLocalError(f"--from {key!r}: {model} has the GGUF sources {', '.join(sources)}")
    chosen = sources[key]
    return PullTarget(chosen["repo"], chosen["pattern"].format(quant=q), validate_name(name or model), q)


def _expected_online(repo: str, file: str, revision: str | None) -> tuple[dict | None, Exception | None]:
    """(hub facts about the file, None) online; (None, the connection error) when unreachable."""
    from huggingface_hub import HfApi

    what = f"{repo}@{revision or 'main'}"
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:
        if is_connection_error(exc):
            return None, exc
        raise (hub_error(exc, what) or exc) from None
    for sib in info.siblings or []:
        if sib.rfilename == file:
            lfs = sib.lfs
            return {"commit": info.sha, "size": lfs.size if lfs is not None else sib.size,
                    "sha256": lfs.sha256 if lfs is not None else None,
                    "verified_against": "hub-lfs-sha256" if lfs is not None else None}, None
    ggufs = sorted(s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".gguf"))
    raise DownloadError(f"{what}: no file {file!r} in the repo"
                        + (f" (its GGUF files: {', '.join(ggufs[:12])}{' ...' if len(ggufs) > 12 else ''})"
                           if ggufs else ""))


def _expected_from_cache(repo: str, file: str, revision: str | None, cached: Path) -> dict:
    """What the HF cache recorded from the hub when it downloaded the file."""
    commit = cached.parent.name if _COMMIT.match(cached.parent.name) else None
    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface-hub >= 1.x

        for entry in get_cached_repo_tree(repo, revision=commit or revision):
            if getattr(entry, "path", None) == file and getattr(entry, "lfs", None) is not None:
                return {"commit": commit, "size": entry.lfs.size, "sha256": entry.lfs.sha256,
                        "verified_against": "hf-cache-tree-listing"}
    except Exception:  # no listing cached (hf_hub_download alone does not write one)
        pass
    blob = cached.resolve()
    if blob.parent.name == "blobs" and _SHA256.match(blob.name):
        return {"commit": commit, "size": None, "sha256": blob.name, "verified_against": "hf-cache-etag"}
    return {"commit": commit, "size": None, "sha256": None, "verified_against": None}


def pull_gguf(target: str, file: str | None = None, *, revision: str | None = None, quant: str | None = None,
              name: str | None = None, source_key: str | None = None, store: str | Path | None = None,
              profile: str | None = None, force: bool = False,
              reporter: Reporter | None = None) -> PullReport:
    say = reporter or Reporter()
    spec = resolve_target(target, file, quant=quant, name=name, source_key=source_key)
    root = store_dir(store)
    manifest = mf.load(root, spec.name)
    stages: list[Stage] = []

    facts, offline_exc = _expected_online(spec.repo, spec.file, revision)
    commit = facts["commit"] if facts else None
    if spec.quant:  # already there and intact?
        report = _already_there(spec, root, manifest, commit, force, say, stages)
        if report is not None:
            return report
    cached = _download(spec, root / spec.name, facts, offline_exc, revision, say, stages)
    if facts is None or not facts.get("sha256"):
        facts = {**_expected_from_cache(spec.repo, spec.file, revision, cached),
                 **({"commit": facts["commit"]} if facts and facts.get("commit") else {})}
    dest, digest, info, q = _into_store(spec, root / spec.name, cached, facts, force, say, stages)
    expected = facts.get("sha256")

    origin = {"kind": "pull", "repo": spec.repo, "file": spec.file, "revision": revision or "main",
              "commit": facts.get("commit"), "fingerprint": f"pull:{spec.repo}@{facts.get('commit')}/{spec.file}"}
    entry = mf.file_entry(dest, digest, type=q, role="output", made_by="pull", source=origin,
                          expected_sha256=expected, verified_against=facts.get("verified_against") if expected else None,
                          file_type=info.get("quant"), tools=mf.tool_versions())
    manifest.setdefault("files", {})[q] = entry
    manifest.setdefault("source", origin)
    manifest["profile"] = profile or manifest.get("profile") or registry().get(spec.name, {}).get("profile") \
        or DEFAULT_PROFILE
    manifest.setdefault("gguf", {k: v for k, v in info.items() if k != "quant"})
    if not expected:
        say.note(f"{dest.name}: the hub gave no sha256 for this file; recorded its sha256 {digest[:16]}… unverified")
    elif info.get("quant") and info["quant"] != q:
        say.note(f"{dest.name}: the file says it is {info['quant']}, stored as {q} as asked")
    return PullReport(spec.name, q, dest, mf.write(root, spec.name, manifest), entry, stages)


def _already_there(spec: PullTarget, root: Path, manifest: dict, commit: str | None, force: bool, say: Reporter,
                   stages: list[Stage]) -> PullReport | None:
    """The report of a pull with nothing to do (the file is in the store, from the same source, and
    its sha256 matches the manifest); None when it must be pulled (again). Refuses to replace a file
    from elsewhere without --force."""
    dest = root / spec.name / gguf_name(spec.name, spec.quant)
    entry = manifest.setdefault("files", {}).get(spec.quant)
    origin = (entry or {}).get("source") or {}
    if dest.exists() and not entry and not force:
        raise PromLocalError(f"{dest} is already in the store but not in its manifest; "
                             "pass --force to replace it")
    if not (dest.exists() and entry and not force):
        return None
    same = origin.get("repo") == spec.repo and origin.get("file") == spec.file and \
        (commit is None or origin.get("commit") == commit)
    if not same:
        raise PromLocalError(f"{dest} is already in the store (from "
                             f"{origin.get('repo') or origin.get('path') or 'elsewhere'}); "
                             "pass --force to replace it, or --name to keep both")
    digest, seconds = hash_with_progress(dest, say, "verify")
    ok = digest == entry.get("sha256")
    say.done(f"{dest.name}: {'matches the manifest' if ok else 'differs from the manifest: pulling again'}")
    stages.append(Stage("verify", dest.name, "ran", seconds, detail="ok" if ok else "mismatch"))
    if not ok:
        return None
    return PullReport(spec.name, spec.quant, dest, mf.write(root, spec.name, manifest), entry, stages)


def _download(spec: PullTarget, model_dir: Path, facts: dict | None, offline_exc: BaseException | None,
              revision: str | None, say: Reporter, stages: list[Stage]) -> Path:
    """The file in the HF cache (downloaded unless cached), after checking there is disk for it."""
    from huggingface_hub import constants, hf_hub_download

    what = f"{spec.repo}/{spec.file}"
    commit = facts["commit"] if facts else None
    # Disk: the HF cache gets the download; the store needs a copy only if a hard link is impossible.
    if facts and facts.get("size"):
        size = int(facts["size"])
        check_free(Path(constants.HF_HUB_CACHE), size + (64 << 20), f"downloading {spec.file}")
        check_free(model_dir, size + (64 << 20), f"storing {spec.file}")
        say.note(f"download: {what} ({human(size)}, commit {commit[:12] if commit else '?'})")
    elif offline_exc is not None:
        say.note(f"download: hub not reachable ({type(offline_exc).__name__}); looking in the HF cache")

    say.start("download", spec.file, total=None)
    t0 = time.perf_counter()
    try:
        # Once the hub has proved unreachable, look only in the cache: hf_hub_download would
        # otherwise retry the connection for half a minute before doing the same.
        cached = Path(hf_hub_download(spec.repo, spec.file, revision=commit or revision,
                                      local_files_only=offline_exc is not None))
    except Exception as exc:
        if type(exc).__name__ == "LocalEntryNotFoundError" or is_connection_error(exc):
            raise DownloadError(offline_message(f"{what}@{revision or 'main'}", offline_exc or exc,
                                                hint="pass a .gguf you already have with --model PATH")) from None
        raise (hub_error(exc, what) or exc) from None
    stages.append(Stage("download", spec.file, "ran", time.perf_counter() - t0, detail=str(cached)))
    say.done(f"{spec.file}: {cached}")
    return cached


def _into_store(spec: PullTarget, model_dir: Path, cached: Path, facts: dict, force: bool, say: Reporter,
                stages: list[Stage]) -> tuple[Path, str, dict, str]:
    """The cached file linked or copied into the store under its quant name, its sha256 checked
    against the hub's -> (path, sha256, GGUF summary, quant). Nothing is left behind on failure."""
    created_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / (spec.file.rsplit("/", 1)[-1] + ".partial")
    try:
        digest = _stage_copy(cached, staging, say, stages)
        expected = facts.get("sha256")
        if expected and digest != expected:
            raise IntegrityError(f"{cached}: sha256 is {digest}, but the hub says {expected} "
                                 f"({facts['verified_against']}); the cached copy is corrupt or incomplete. "
                                 f"Delete it from the HF cache (hf cache delete, or rm {cached.resolve()}) "
                                 "and pull again")
        info = _gguf_summary(staging, cached)
        q = spec.quant or info.get("quant")
        if not q:
            raise PromLocalError(f"{spec.file}: cannot tell its quantization type; pass --quant")
        dest = model_dir / gguf_name(spec.name, q)
        if spec.quant is None and dest.exists() and not force:  # learned the quant only now
            raise PromLocalError(f"{dest} is already in the store; pass --force to replace it, "
                                 "or --name to keep both")
        staging.replace(dest)
    except BaseException:
        staging.unlink(missing_ok=True)
        if created_dir and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    return dest, digest, info, q


def _stage_copy(cached: Path, staging: Path, say: Reporter, stages: list[Stage]) -> str:
    """Hard-link the cache's blob into the store (no second copy of 5 GB) or copy it; then hash."""
    blob = cached.resolve()
    staging.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        os.link(blob, staging)
        how = "hard link"
    except OSError:
        shutil.copyfile(blob, staging)
        how = "copy"
    shown = staging.name.removesuffix(".partial")
    digest, _ = hash_with_progress(staging, say, "hash", shown)
    say.done(f"{shown}: sha256 {digest[:16]}… ({how} from the HF cache)")
    stages.append(Stage("hash", shown, "ran", time.perf_counter() - t0, detail=how))
    return digest



def _gguf_summary(path: Path, shown: Path) -> dict:
    """The GGUF's summary (metadata only): proves it is a GGUF llama.cpp reads, and says its type."""
    try:
        return gguf_summary(path)
    except (ModelLoadError, ModelNotFound) as exc:
        raise IntegrityError(f"{shown}: llama.cpp cannot read this GGUF ({str(exc).split(': ', 1)[-1]})") from None
