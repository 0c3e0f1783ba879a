"""docs/cli.md is generated from the typer app (prom_local/cli/reference.py) and must stay what the code
generates, so a new command or option cannot go undocumented; and it must name everything `--help`
shows, for every command and sub-command."""

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env, invoke

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "cli.md"


def command_paths() -> list[list[str]]:
    """Every command and sub-command, as argument lists (["score"], ["batch", "submit"], ...)."""
    import typer.main

    from prom_local.cli import app

    def walk(command, ctx, prefix):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield prefix + [name]
            if hasattr(sub, "list_commands"):
                yield from walk(sub, sub.context_class(sub, info_name=name, parent=ctx), prefix + [name])

    root = typer.main.get_command(app)
    return list(walk(root, root.context_class(root, info_name="prom-local"), []))


def section_of(text: str, path: list[str]) -> str:
    """The reference's section for one command: from its heading to the next command's heading."""
    heading = re.search(rf"^#+ `prom-local {' '.join(path)}`$", text, flags=re.M)
    assert heading, f"docs/cli.md has no section for `prom-local {' '.join(path)}`"
    following = re.search(r"^#+ `prom-local ", text[heading.end():], flags=re.M)
    return text[heading.start(): heading.end() + (following.start() if following else len(text))]


def test_the_committed_reference_is_what_the_code_generates():
    from prom_local.cli.reference import REFRESH, render

    fresh, committed = render(), REFERENCE.read_text("utf-8")
    if fresh != committed:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                                 "docs/cli.md (committed)", "docs/cli.md (generated)"))[:60])
        pytest.fail(f"docs/cli.md is out of date with the CLI: run `{REFRESH}` and commit it.\n{diff}")


def test_the_reference_does_not_depend_on_the_terminal():
    """Another width, colours forced on, no TERM: the same bytes (what CI and a developer's terminal
    generate must agree)."""
    from prom_local.cli.reference import render

    narrow = subprocess.run([sys.executable, "-m", "prom_local.cli.reference"], capture_output=True, text=True,
                            env=cli_env(COLUMNS="40", FORCE_COLOR="1", NO_COLOR="", TERM="xterm-256color"),
                            cwd=ROOT, timeout=120)
    assert narrow.returncode == 0, narrow.stderr
    assert narrow.stdout == render()


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_the_reference_names_every_option_help_shows(path):
    """Each command's `--help`, rendered by typer itself, names no option the reference's section lacks."""
    help_text = invoke(*path, "--help", columns=250)
    assert help_text.returncode == 0, help_text.stderr
    section = section_of(REFERENCE.read_text("utf-8"), path)
    described = "\n".join(line for line in help_text.stdout.splitlines() if "Usage:" not in line)  # not `python -m`
    shown = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", described)) - {"--help"}
    is_group = any(other[:len(path)] == path and other != path for other in command_paths())
    assert shown or is_group, f"no option found in:\n{help_text.stdout}"   # a group has only --help
    missing = sorted(flag for flag in shown if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", section))
    assert not missing, f"`prom-local {' '.join(path)} --help` shows {missing}, docs/cli.md does not"
