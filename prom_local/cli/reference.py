"""docs/cli.md, generated from the typer app: every command and sub-command, every argument and option
with its help, default and environment variable, exactly as `--help` knows them, so the reference
cannot drift from the code (tests/test_cli_reference.py regenerates it and compares).

    python -m prom_local.cli.reference --write     # rewrite docs/cli.md after changing an option
    python -m prom_local.cli.reference             # print it

It reads the click objects typer builds (duck-typed: recent typer versions vendor their own copy of
click) rather than rendering `--help`, so the text does not depend on the terminal's width or colours;
commands come in `--help`'s order, options in declaration order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main

from . import app

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REFRESH = "python -m prom_local.cli.reference --write"

HEADER = f"""# Command reference

Every `prom-local` command and sub-command with all of its arguments and options, as `--help` prints
them. This page is generated from the code: do not edit it by hand; after changing a command, run
`{REFRESH}`. The topic pages say what the options are for: [formats.md](formats.md)
(input, rows, exit codes), [performance.md](performance.md) (the engine options),
[sampling.md](sampling.md), [pairwise.md](pairwise.md), [serve.md](serve.md).
"""


def _text(help_text: str | None) -> str:
    """Help text as Markdown: typer reads docstrings as Markdown already (rich_markup_mode); only
    angle brackets outside `code`, which Markdown would take for HTML, are escaped."""
    pieces = (help_text or "").strip().split("`")
    for i in range(0, len(pieces), 2):   # the even pieces are outside backticks
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces)


def _summary(command) -> str:
    """The first paragraph of a command's help, on one line (click's short help would stop at "e.g.")."""
    first = (command.help or "").strip().split("\n\n")[0]
    return _text(" ".join(first.split()))


def _is_group(command) -> bool:
    return hasattr(command, "list_commands")


def _child(command, name: str, parent):
    return command.context_class(command, info_name=name, parent=parent)


def _usage(command, ctx) -> str:
    pieces = [ctx.command_path]
    if any(p.param_type_name == "option" for p in command.params):
        pieces.append("[OPTIONS]")
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.name.upper()
            name += "..." if param.nargs == -1 else ""
            pieces.append(name if param.required else f"[{name}]")
    if _is_group(command):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _params(command, ctx) -> list[str]:
    lines = []
    for kind, title in (("argument", "Arguments"), ("option", "Options")):
        records = [p.get_help_record(ctx) for p in command.params
                   if p.param_type_name == kind and not getattr(p, "hidden", False)]
        records = [r for r in records if r]
        if records:
            lines += [f"**{title}**", ""]
            lines += [f"- `{name}`: {_text(help_text)}".rstrip(": ") for name, help_text in records]
            lines.append("")
    return lines


def _section(command, ctx, level: int) -> list[str]:
    lines = [f"{'#' * level} `{ctx.command_path}`", "", _text(command.help), "", "```", _usage(command, ctx), "```", ""]
    lines += _params(command, ctx)
    if _is_group(command):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _section(sub, _child(sub, name, ctx), level + 1)
    return lines


def _index(group, ctx, indent: str = "") -> list[str]:
    lines = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = _child(sub, name, ctx)
        anchor = sub_ctx.command_path.replace(" ", "-")
        summary = _summary(sub)
        lines.append(f"{indent}- [`{sub_ctx.command_path}`](#{anchor}): {summary}")
        if _is_group(sub):
            lines += _index(sub, sub_ctx, indent + "    ")
    return lines


def render() -> str:
    """The whole reference, as docs/cli.md holds it."""
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="prom-local")
    lines = [HEADER, "## Commands", ""] + _index(root, ctx) + [""]
    lines += ["## Options of `prom-local` itself", "", "```", _usage(root, ctx), "```", ""]
    lines += _params(root, ctx)
    for name in root.list_commands(ctx):
        sub = root.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            lines += _section(sub, _child(sub, name, ctx), 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--write"]:
        REFERENCE.write_text(text, encoding="utf-8")
        print(f"wrote {REFERENCE}", file=sys.stderr)
    elif not argv:
        sys.stdout.write(text)
    else:
        print(f"usage: {REFRESH} (or no argument: print it)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
