"""Rubrics people save for themselves, in the user config folder (one JSON file, all rubrics).

The file maps a name to prometheus-eval's rubric keys (criteria, score1..5_description), so it can
be edited by hand or shared. It is rewritten atomically: a crash mid-save never loses the others.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


from ..errors import ExitCode, PromLocalError
from ..settings import config_dir
from ..judging.rubrics import Rubric, presets

MAX_NAME = 60


class RubricStoreError(PromLocalError):
    """A user rubrics file that cannot be read or written, or a name that cannot be saved."""

    exit_code = ExitCode.USAGE


def rubrics_file(directory: str | Path | None = None) -> Path:
    return Path(directory or config_dir()) / "rubrics.json"


def load_user_rubrics(path: str | Path | None = None) -> dict[str, Rubric]:
    """Saved rubrics by name, in the order they were first saved; {} when none were saved yet."""
    p = Path(path) if path is not None else rubrics_file()
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise RubricStoreError(f"{p}: cannot read ({exc})") from None
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RubricStoreError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg}); fix or remove the file") from None
    if not isinstance(raw, dict):
        raise RubricStoreError(f"{p}: expected a JSON object of name -> rubric")
    out: dict[str, Rubric] = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise RubricStoreError(f"{p}: rubric {name!r}: expected an object with criteria and "
                                   "score1..5_description")
        try:
            out[name] = Rubric.from_mapping(body)
        except KeyError as exc:
            raise RubricStoreError(f"{p}: rubric {name!r}: '{exc.args[0]}' missing or empty") from None
        except TypeError as exc:
            raise RubricStoreError(f"{p}: rubric {name!r}: '{exc.args[0]}' must be a string") from None
    return out


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise RubricStoreError("a rubric needs a name")
    if len(name) > MAX_NAME:
        raise RubricStoreError(f"rubric names are at most {MAX_NAME} characters")
    if name in presets():
        raise RubricStoreError(f"{name!r} is a built-in preset; choose another name")
    return name


def save_user_rubric(name: str, rubric: Rubric, path: str | Path | None = None) -> Path:
    """Add or replace one saved rubric; returns the file written."""
    name = check_name(name)
    p = Path(path) if path is not None else rubrics_file()
    existing = load_user_rubrics(p)
    existing[name] = rubric
    _write(p, {n: r.as_dict() for n, r in existing.items()})
    return p


def delete_user_rubric(name: str, path: str | Path | None = None) -> bool:
    p = Path(path) if path is not None else rubrics_file()
    existing = load_user_rubrics(p)
    if name not in existing:
        return False
    del existing[name]
    _write(p, {n: r.as_dict() for n, r in existing.items()})
    return True


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rubrics-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise RubricStoreError(f"{path}: cannot save ({exc.strerror or exc})") from None
