"""`python -m convert SOURCE [options]`: the same as `prom-local convert`, from a checkout."""

import sys

import typer

from prom_local.cli import convert_cmd
from prom_local.errors import PromLocalError


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    convert_cmd.register(app)  # a one-command app runs that command directly
    try:
        app()
    except PromLocalError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("convert: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
