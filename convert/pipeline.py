"""The stages of `prom-local convert`: download -> convert (16-bit GGUF) -> quantize -> hash, resumable.

Every output is written under a `.partial` name and renamed when complete, then hashed and recorded
in the manifest before the next stage starts. A re-run checks each wanted output against the
manifest (same source fingerprint, same sha256) and runs only the stages whose outputs are missing,
modified or truncated. Free disk is checked before each stage against an estimate of what it writes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from prom_local.store import manifest as mf
from prom_local.errors import ConvertError
from prom_local.engine.model_info import gguf_summary
from prom_local.settings import DEFAULT_PROFILE
from prom_local.store.models import gguf_name, registry, store_dir, validate_name
from prom_local.store.stages import Reporter, Stage, check_free, hash_with_progress, human

from . import gguf16, source as src
from .quantize import IMATRIX_IGNORED, estimate_bytes, parse_quant, quantize


@dataclass
class ConvertReport:
    name: str
    store: Path
    manifest_path: Path
    manifest: dict
    stages: list[Stage] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"name": self.name, "store": str(self.store), "manifest": str(self.manifest_path),
                "files": self.manifest.get("files", {}), "stages": [s.as_dict() for s in self.stages]}


def default_name(source: src.Source) -> str:
    """The registry's name when the source is a known checkpoint (prometheus-ko), else the checkpoint's."""
    for name, entry in registry().items():
        if source.repo and entry.get("hub_repo", "").lower() == source.repo.lower():
            return name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source.model_name).strip("-.") or "model"


def _profile_for(name: str, explicit: str | None) -> str:
    from prom_local.judging.prompts import get_profile

    profile = explicit or registry().get(name, {}).get("profile") or DEFAULT_PROFILE
    try:
        get_profile(profile)
    except KeyError as exc:
        raise ConvertError(f"--profile: {exc.args[0]}") from None
    return profile


def convert_model(source: str, *, revision: str | None = None, name: str | None = None,
                  store: str | Path | None = None, quants: Sequence[str] = ("Q4_K_M", "Q8_0"),
                  outtype: str = "f16", keep_f16: bool = False, allow_pickle: bool = False,
                  force: bool = False, profile: str | None = None, threads: int | None = None,
                  imatrix_data: str | Path | None = None, imatrix_ctx: int = 4096,
                  reporter: Reporter | None = None) -> ConvertReport:
    """Checkpoint (hub id or folder) -> <store>/<name>/<name>.<QUANT>.gguf for each quant + manifest.

    With `imatrix_data` (a JSONL of judge records), an importance matrix is computed from those
    prompts on the 16-bit model and guides every quantization (see convert/imatrix.py)."""
    say = reporter or Reporter()
    if outtype not in gguf16.OUTTYPES:
        raise ConvertError(f"--outtype {outtype!r}: expected one of {', '.join(gguf16.OUTTYPES)}")
    wanted = list(dict.fromkeys(parse_quant(q) for q in quants))
    if not wanted:
        raise ConvertError("no --quant given")
    inter = gguf16.OUTTYPES[outtype]
    im_key = None
    if imatrix_data is not None:
        imatrix_data = Path(imatrix_data)
        if not imatrix_data.is_file():
            raise ConvertError(f"--imatrix-data {imatrix_data}: no such file")
        if imatrix_ctx < 64:
            raise ConvertError(f"--imatrix-ctx {imatrix_ctx}: too small (64 tokens at least)")
        # Outputs made with other calibration data (or none) are not what this run asks for.
        im_key = f"{mf.sha256_file(imatrix_data)}:{imatrix_ctx}"

    origin = src.identify(source, revision=revision, allow_pickle=allow_pickle)
    name = validate_name(name or default_name(origin))
    profile = _profile_for(name, profile)
    root = store_dir(store)
    model_dir = root / name
    manifest = mf.load(root, name)
    files: dict = manifest.setdefault("files", {})
    stages: list[Stage] = []
    say.note(f"source {origin.label} -> {model_dir} ({', '.join(wanted)})")

    def path_of(quant: str) -> Path:
        return model_dir / gguf_name(name, quant)

    memo: dict[str, bool] = {}

    def verified(quant: str) -> bool:
        """The output exists, was made from this very source, and still has its recorded sha256."""
        if quant in memo:
            return memo[quant]
        path, entry = path_of(quant), files.get(quant)
        ok = False
        if not path.exists():
            pass
        elif entry is None:
            say.note(f"{path} is not in the manifest: making it again")
        elif (entry.get("source") or {}).get("fingerprint") != origin.fingerprint:
            theirs = entry.get("source") or {}
            label = theirs.get("repo") or theirs.get("path") or "another source"
            if not force:
                raise ConvertError(f"{path} was made from {label} ({theirs.get('commit') or theirs.get('fingerprint')}), "
                                   f"not from {origin.label}; pass --force to replace it, or --name to keep both")
            say.note(f"{path}: replacing (--force; it came from {label})")
        elif force:
            say.note(f"{path}: making it again (--force)")
        elif quant not in IMATRIX_IGNORED and (entry.get("imatrix") or {}).get("key") != im_key:
            why = ("without an importance matrix" if not entry.get("imatrix") else
                   "with an importance matrix, and this run has none" if im_key is None else
                   "with another importance matrix")
            say.note(f"{path}: made {why}: making it again")
        else:
            if path.stat().st_size == entry.get("size"):
                digest, seconds = hash_with_progress(path, say, "verify")
            else:
                say.start("verify", path.name)
                digest, seconds = None, 0.0
            ok = digest == entry.get("sha256")
            say.done(f"{path.name} matches the manifest" if ok else
                     f"{path.name} differs from the manifest ({'size' if digest is None else 'sha256'}"
                     "; truncated or modified): making it again")
            stages.append(Stage("verify", path.name, "ran", seconds, detail="ok" if ok else "mismatch"))
        memo[quant] = ok
        return ok

    todo = [q for q in wanted if not verified(q)]
    for q in wanted:
        if q not in todo:
            stages.append(Stage("quantize" if q != inter else "convert", path_of(q).name, "skipped",
                                detail="verified output already there"))
    f16_path = path_of(inter)
    inter_is_output = inter in wanted or keep_f16 or (files.get(inter) or {}).get("role") == "output"
    need_f16 = bool(todo) or (keep_f16 and inter not in wanted and not verified(inter))

    if need_f16 and not verified(inter):
        gguf16.require_converter()
        folder = origin.path
        if origin.kind == "hub":
            folder = _download_stage(origin, allow_pickle, say, stages)
        assert folder is not None
        needed = gguf16.estimate_bytes(folder)
        free = check_free(model_dir, needed, f"converting to {inter}")
        say.note(f"convert: {folder} -> {f16_path.name} (needs ~{human(needed)}, {human(free)} free)")
        say.start("convert", f16_path.name, total=1.0)
        model_dir.mkdir(parents=True, exist_ok=True)
        result = gguf16.convert_to_gguf(folder, f16_path, outtype=outtype, model_name=origin.model_name,
                                        on_progress=lambda frac, text: say.update(frac, text=text))
        say.done(f"{f16_path.name}: {human(f16_path.stat().st_size)} in {result.seconds:.1f} s, "
                 f"converter peak RSS {human(result.peak_rss_bytes or 0)}")
        stages.append(Stage("convert", f16_path.name, "ran", result.seconds, result.peak_rss_bytes))
        digest = _hash_stage(f16_path, say, stages)
        files[inter] = mf.file_entry(f16_path, digest, type=inter,
                                     role="output" if inter_is_output else "intermediate",
                                     made_by="convert-hf-to-gguf", made_from="checkpoint",
                                     source=origin.describe(), seconds=round(result.seconds, 2),
                                     peak_rss_bytes=result.peak_rss_bytes, tools=mf.tool_versions(converter=True))
        _save(root, name, manifest, origin, profile)
    elif need_f16 and inter not in wanted:
        stages.append(Stage("convert", f16_path.name, "skipped", detail="verified 16-bit GGUF already there"))

    quant_todo = [q for q in todo if q != inter]
    imatrix_file = None
    if im_key is not None and any(q not in IMATRIX_IGNORED for q in quant_todo):
        imatrix_file = _imatrix_stage(model_dir / f"{name}.imatrix", f16_path, files[inter]["sha256"], manifest,
                                      im_key, imatrix_data, imatrix_ctx, profile, threads, force, say, stages)
        _save(root, name, manifest, origin, profile)

    for quant in quant_todo:
        out = path_of(quant)
        needed = estimate_bytes(f16_path.stat().st_size, quant)
        free = check_free(model_dir, needed, f"quantizing to {quant}")
        say.note(f"quantize: {f16_path.name} -> {out.name} (needs ~{human(needed)}, {human(free)} free)")
        say.start("quantize", out.name, total=None)
        guided = imatrix_file if quant not in IMATRIX_IGNORED else None
        result = quantize(f16_path, out, quant, threads=threads, imatrix=guided,
                          on_progress=lambda i, n: say.update(i, total=n))
        say.done(f"{out.name}: {human(out.stat().st_size)} in {result.seconds:.1f} s, "
                 f"peak RSS {human(result.peak_rss_bytes or 0)}")
        stages.append(Stage("quantize", out.name, "ran", result.seconds, result.peak_rss_bytes))
        digest = _hash_stage(out, say, stages)
        files[quant] = mf.file_entry(out, digest, type=quant, role="output", made_by="llama_model_quantize",
                                     made_from=f16_path.name, from_sha256=files[inter]["sha256"],
                                     source=origin.describe(), seconds=round(result.seconds, 2),
                                     peak_rss_bytes=result.peak_rss_bytes, tools=mf.tool_versions())
        if guided is not None:
            files[quant]["imatrix"] = {"key": im_key, "file": imatrix_file.name,
                                       "sha256": manifest["imatrix"]["sha256"]}
        _save(root, name, manifest, origin, profile)

    entry = files.get(inter)
    if entry is not None and f16_path.exists():
        if inter_is_output:
            entry["role"] = "output"
        else:
            f16_path.unlink()
            files.pop(inter)
            stages.append(Stage("cleanup", f16_path.name, "ran", detail="removed the 16-bit intermediate "
                                "(--keep-f16 keeps it)"))
    first = next((path_of(q) for q in wanted if path_of(q).exists()), None)
    if first is not None:
        manifest["gguf"] = {k: v for k, v in gguf_summary(first).items() if k != "quant"}
    path = _save(root, name, manifest, origin, profile)
    return ConvertReport(name, root, path, manifest, stages)


def _save(root: Path, name: str, manifest: dict, origin: src.Source, profile: str) -> Path:
    manifest["source"] = origin.describe()
    manifest["profile"] = profile
    manifest["tools"] = mf.tool_versions(converter=True)
    return mf.write(root, name, manifest)


def _download_stage(origin: src.Source, allow_pickle: bool, say: Reporter, stages: list[Stage]) -> Path:
    from huggingface_hub import constants

    t0 = time.perf_counter()
    if origin.online:
        missing = src.bytes_to_download(origin)
        total = sum(origin.files.values())
        if missing:
            free = check_free(Path(constants.HF_HUB_CACHE), missing + (256 << 20), f"downloading {origin.repo}")
            say.note(f"download: {len(origin.files)} files of {origin.label}, {human(missing)} to fetch of "
                     f"{human(total)} ({human(free)} free in {constants.HF_HUB_CACHE})")
        else:
            say.note(f"download: all {len(origin.files)} files of {origin.label} are in the HF cache")
    else:
        missing = 0
        say.note(f"download: hub not reachable; using the cached snapshot of {origin.label}")
    say.start("download", origin.label, total=None)
    folder = src.download(origin, allow_pickle=allow_pickle)
    seconds = time.perf_counter() - t0
    say.done(f"{origin.label}: {folder}")
    stages.append(Stage("download", origin.label, "ran" if missing else "skipped", seconds,
                        detail=f"{missing} bytes fetched" if missing else "cached"))
    return folder


def _imatrix_stage(path: Path, f16_path: Path, f16_sha256: str, manifest: dict, key: str, data: Path,
                   n_ctx: int, profile: str, threads: int | None, force: bool, say: Reporter,
                   stages: list[Stage]) -> Path:
    """The importance matrix for this calibration data: reused when recorded and intact, else computed."""
    from . import imatrix

    entry = manifest.get("imatrix") or {}
    if not force and path.exists() and entry.get("key") == key and entry.get("from_sha256") == f16_sha256 and \
            mf.sha256_file(path) == entry.get("sha256"):
        stages.append(Stage("imatrix", path.name, "skipped", detail="verified importance matrix already there"))
        return path
    prompts, skipped = imatrix.calibration_prompts(data, f16_path, profile)
    say.note(f"imatrix: {len(prompts)} judge prompts from {data}" + (f" ({skipped} records skipped)" if skipped else ""))
    say.start("imatrix", path.name, total=None)
    result = imatrix.compute(f16_path, prompts, path, n_ctx=n_ctx, threads=threads, dataset=data.name,
                             on_progress=lambda i, n: say.update(i, total=n))
    say.done(f"{path.name}: {result.entries} matrices, {result.tokens:,} tokens in {result.seconds:.1f} s, "
             f"peak RSS {human(result.peak_rss_bytes or 0)}")
    stages.append(Stage("imatrix", path.name, "ran", result.seconds, result.peak_rss_bytes,
                        detail=f"{result.tokens} tokens"))
    manifest["imatrix"] = {"file": path.name, "size": path.stat().st_size, "sha256": mf.sha256_file(path),
                           "key": key, "data": str(data.resolve()), "data_sha256": key.split(":")[0], "records": len(prompts),
                           "records_skipped": skipped, "tokens": result.tokens, "chunks": result.chunks,
                           "chunk_size": n_ctx, "entries": result.entries,
                           "from_sha256": f16_sha256,
                           "seconds": round(result.seconds, 2), "peak_rss_bytes": result.peak_rss_bytes,
                           "created": mf.now()}
    return path


def _hash_stage(path: Path, say: Reporter, stages: list[Stage]) -> str:
    digest, seconds = hash_with_progress(path, say, "hash")
    say.done(f"{path.name}: sha256 {digest[:16]}…")
    stages.append(Stage("hash", path.name, "ran", seconds))
    return digest


__all__ = ["ConvertReport", "Reporter", "Stage", "check_free", "convert_model", "human"]
