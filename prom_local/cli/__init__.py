"""`prom-local`: a thin typer shell over the library. Each command lives in its own module."""

from __future__ import annotations

import errno
import sys

import typer
from typer.core import TyperGroup

from ..errors import ExitCode, PromLocalError
from . import (batch_cmd, bench_cmd, compare_cmd, convert_cmd, doctor_cmd, grade_cmd, info_cmd, models_cmd, pull_cmd,
               render_cmd, report_cmd, score_cmd, serve_cmd, tui_cmd)

EXIT_IO_ERROR, EXIT_INTERRUPTED = ExitCode.FAILURE, ExitCode.INTERRUPTED


def fail(message: str, code: int) -> typer.Exit:
    """Print the one line a user-caused failure ends in; return the exit to raise."""
    typer.echo(f"prom-local: error: {message}", err=True)
    return typer.Exit(code)


class _Commands(TyperGroup):
    """Every command runs inside this: a failure a user can cause (PromLocalError, or an OS error on a
    file they named) ends in one line and its exit code, never a traceback. Done here rather than in
    main() so that in-process runs (typer's CliRunner) see exactly what the real command does."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PromLocalError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except OSError as exc:   # a path the library did not expect to fail: still the user's file
            if exc.errno == errno.EPIPE:
                raise   # `prom-local ... | head`: typer quiets the closed pipe itself
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}", EXIT_IO_ERROR) from None
        except KeyboardInterrupt:
            raise fail("interrupted; re-run the same command to resume", EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_Commands,
    name="prom-local",
    help="Run a Prometheus-style LLM judge (Korean Prometheus on Llama 3) privately with llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # joins wrapped docstring lines into paragraphs
)
# Order = order in --help: the main job first, then model management, then review tools.
for module in (score_cmd, grade_cmd, serve_cmd, batch_cmd, tui_cmd, render_cmd, report_cmd, compare_cmd, convert_cmd,
               pull_cmd, models_cmd, info_cmd, doctor_cmd, bench_cmd):
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
    except PromLocalError as exc:  # raised outside a command (e.g. while parsing): the same one line
        print(f"prom-local: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("prom-local: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
