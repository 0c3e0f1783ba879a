"""`prom-local`: a thin typer shell over the library. Each command lives in its own module."""

from __future__ import annotations

import sys

import typer

from ..errors import PromLocalError
from . import (compare_cmd, convert_cmd, grade_cmd, info_cmd, models_cmd, pull_cmd, render_cmd, report_cmd,
               score_cmd, serve_cmd, tui_cmd)

app = typer.Typer(
    name="prom-local",
    help="Run a Prometheus-style LLM judge (Korean Prometheus on Llama 3) privately with llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # joins wrapped docstring lines into paragraphs
)
# Order = order in --help: the main job first, then model management, then review tools.
for module in (score_cmd, grade_cmd, serve_cmd, tui_cmd, render_cmd, report_cmd, compare_cmd, convert_cmd, pull_cmd,
               models_cmd, info_cmd):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        from .. import __version__
        print(f"prom-local {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Run a Prometheus-style LLM judge (Korean Prometheus on Llama 3) privately with llama.cpp."""


def main() -> None:
    try:
        app()
    except PromLocalError as exc:  # user errors: a message, never a traceback
        print(f"prom-local: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("prom-local: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
