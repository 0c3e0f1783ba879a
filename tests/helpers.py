"""Helpers shared by the test modules: the CLI in a subprocess or in this process, JSONL files,
and short records. Importable as `helpers` because pyproject's [tool.pytest.ini_options] puts
tests/ on the path (`pythonpath`), so no test edits sys.path or imports from conftest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

RUBRIC = {
    "criteria": "응답은 질문에 정확하게 답하는가?",
    "score1_description": "틀렸다.",
    "score2_description": "대부분 틀렸다.",
    "score3_description": "부분적으로 맞다.",
    "score4_description": "대체로 맞다.",
    "score5_description": "완전히 맞다.",
}


def short_record(i: int, **extra) -> dict:
    """Short Korean records: a few hundred tokens, so real inference stays fast in tests."""
    return {"id": f"r{i}", "instruction": f"{i} 더하기 {i}는?", "response": f"{2 * i}입니다.",
            "rubric": RUBRIC, **extra}


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: dicts as JSON, strings as they are (for deliberately broken lines)."""
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()]


def in_order(rows: list[dict], ids: list[str]) -> list[dict]:
    """A results file's rows (written in the order records finished) in the order of `ids` (the
    input's); fails unless every id is there exactly once and no other."""
    found = [row["id"] for row in rows]
    assert sorted(found) == sorted(ids) and len(set(found)) == len(found), (found, ids)
    by_id = {row["id"]: row for row in rows}
    return [by_id[i] for i in ids]


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: this checkout's code first, never the real hub, plain
    wide text (no colour codes or wrapping in what tests read)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_cli(*args, input: str | None = None, cwd: Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m prom_local`), importing this checkout. For what
    needs a process of its own: signals, kills, Ray, conversion. `env` adds to cli_env()."""
    return subprocess.run([sys.executable, "-m", "prom_local", *map(str, args)], input=input, text=True,
                          capture_output=True, cwd=cwd or ROOT, timeout=timeout, env=cli_env(**(env or {})))


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args, input: str | None = None, columns: int = 200) -> CliResult:
    """The CLI in this process, through the same entry point as the `prom-local` script
    (prom_local.cli.main, so PromLocalError -> one line and its exit code), with typer's runner
    capturing stdin/stdout/stderr. Much faster than a subprocess: no interpreter or import cost."""
    from typer.testing import CliRunner

    from prom_local.cli import main

    runner = CliRunner()
    saved_argv = sys.argv
    with runner.isolation(input=input, env={"NO_COLOR": "1", "COLUMNS": str(columns)}) as (out, err, _):
        sys.argv = ["prom-local", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
            sys.stdout.flush()   # the runner's streams buffer: read them only once flushed
            sys.stderr.flush()
        return CliResult(code, out.getvalue().decode("utf-8", "replace"),
                         err.getvalue().decode("utf-8", "replace"))


def judge_on(engine, *, profile=None, sampling=None):
    """A Judge on an engine it does not own (conftest's shared `smollm2_engine`): never close it,
    or use it as a context manager, since Judge.close() closes its engine."""
    from prom_local.judging.judge import Judge
    from prom_local.settings import DEFAULT_PROFILE
    return Judge.with_engine(engine, profile=profile or DEFAULT_PROFILE, sampling=sampling)
