"""The model store: where GGUFs live, the registry of known models, and `name:QUANT` resolution.

Layout: <store>/<name>/<name>.<QUANT>.gguf plus <store>/<name>/manifest.json (written by convert
and pull). Where the store is: settings.models_dir (--models-dir, $PROM_LOCAL_MODELS, ./models in a
checkout, the user data dir).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ConvertError, ModelNotFound
from ..settings import DEFAULT_MODEL, DEFAULT_PROFILE, models_dir
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def registry() -> dict[str, dict]:
    """Known models (checked in as models/registry.json, shipped inside the package)."""
    return json.loads(resources.files("prom_local.data").joinpath("registry.json").read_text("utf-8"))


def store_dir(explicit: str | Path | None = None) -> Path:
    """The store folder (settings.models_dir: the one rule for where it is)."""
    return models_dir(explicit)


def validate_name(name: str) -> str:
    """A store name given to convert or pull (--name): it becomes a folder and NAME in NAME:QUANT."""
    if not _NAME.match(name) or ":" in name:
        raise ConvertError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only "
                           "(it becomes a folder and the part before ':' in --model NAME:QUANT)")
    return name


def gguf_name(name: str, quant: str) -> str:
    return f"{name}.{quant}.gguf"


def manifest_path(store: Path, name: str) -> Path:
    return store / name / "manifest.json"


def read_manifest(store: Path, name: str) -> dict | None:
    path = manifest_path(store, name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelNotFound(f"{path}: manifest is not valid JSON ({exc.msg})") from None


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str | None = None
    quant: str | None = None
    profile: str = DEFAULT_PROFILE


def split_spec(spec: str) -> tuple[str, str | None]:
    name, _, quant = spec.partition(":")
    return name, (quant or None)


def resolve_model(spec: str | Path | None, store: str | Path | None = None) -> ResolvedModel:
    """A GGUF path, or a store name (`prometheus-ko`, `prometheus-ko:Q8_0`) -> the file to load."""
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    as_path = Path(spec).expanduser()
    if as_path.is_file() or spec.endswith(".gguf") or os.sep in spec:
        if not as_path.exists():
            raise ModelNotFound(f"{as_path}: no such model file")
        return ResolvedModel(as_path.resolve())
    root = store_dir(store)
    name, quant = split_spec(spec)
    known = registry()
    manifest = read_manifest(root, name)
    entry = known.get(name, {})
    if not entry and manifest is None and not (root / name).is_dir():
        names = sorted(set(known) | {p.name for p in root.iterdir() if p.is_dir()} if root.exists() else set(known))
        raise ModelNotFound(f"no model or file named {spec!r} (known models: {', '.join(names)}; "
                            "or give a path to a .gguf file)")
    profile = (manifest or {}).get("profile") or entry.get("profile") or DEFAULT_PROFILE
    if quant is None:
        present = sorted(p.name[len(name) + 1:-len(".gguf")] for p in (root / name).glob(f"{name}.*.gguf"))
        default = entry.get("default_quant")
        # The 16-bit intermediate (kept with --keep-f16) is the slowest choice: prefer any quant.
        quantized = [q for q in present if q.upper() not in ("F16", "BF16", "F32")]
        quant = default if default in present or not present else (quantized or present)[0]
    path = root / name / gguf_name(name, quant)
    if not path.exists():
        hints = [f"prom-local pull {name}:{quant}"] if entry.get("gguf_sources") else []
        if entry.get("hub_repo"):
            hints.append(f"prom-local convert {entry['hub_repo']} --name {name} --quant {quant}")
        raise ModelNotFound(f"{name}:{quant} is not in the model store ({path} does not exist).\n"
                            + ("Get it with:\n  " + "\n  ".join(hints) + "\n" if hints else "")
                            + "or pass --model PATH/TO/FILE.gguf")
    return ResolvedModel(path, name, quant, profile)


def list_store(store: str | Path | None = None) -> list[dict]:
    """What is in the store: one entry per GGUF file, with the manifest's record of it if any."""
    root = store_dir(store)
    out = []
    if not root.exists():
        return out
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = read_manifest(root, model_dir.name) or {}
        files = manifest.get("files", {})
        for gguf in sorted(model_dir.glob("*.gguf")):
            quant = gguf.name[len(model_dir.name) + 1:-len(".gguf")] if gguf.name.startswith(model_dir.name + ".") else "?"
            info = files.get(quant, {})
            out.append({"name": model_dir.name, "quant": quant, "path": str(gguf),
                        "size": gguf.stat().st_size, "sha256": info.get("sha256"),
                        "profile": manifest.get("profile"), "source": manifest.get("source")})
    return out
