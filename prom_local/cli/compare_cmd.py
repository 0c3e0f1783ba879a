"""`prom-local compare`: two runs over the same input, e.g. Q4_K_M against Q8_0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import PromLocalError
from ..runs.results_reader import read_results
from .options import err_console


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        # readable=False: the reader reports an unusable file itself, with exit code 4 (as `report`).
        a: Annotated[Path, typer.Argument(help="Results JSONL of run A.", readable=False)],
        b: Annotated[Path, typer.Argument(help="Results JSONL of run B (same input).", readable=False)],
        top: Annotated[int, typer.Option("--top", min=0, help="How many disagreeing records to list.")] = 10,
        as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead.")] = False,
    ) -> None:
        """Compare two runs over the same input (e.g. Q4_K_M against Q8_0).

        Joins the files on record id and prints exact agreement, within 1, Pearson, Spearman,
        Kendall τ, quadratic-weighted κ, an A-vs-B heatmap, each run against gold when the input has
        gold scores, and the records that disagree most. An id written more than once in a file is
        counted once, by its first row, with a warning.
        """
        # Imported here: scipy costs ~0.8 s that `--help` and the other commands should not pay.
        from ..reports.absolute import compare_rows
        from ..reports.rows import RELATIVE, kind_of
        from ..reports.views import comparison_view

        runs = [read_results(a), read_results(b)]
        for run in runs:   # each id counted once; say so, since the figures differ from a plain count
            if run.repeated:
                err_console.print(f"warning: {run.warning()}", style="yellow", markup=False)
        kinds = [{kind_of(r) for r in run.rows} for run in runs]
        if RELATIVE in kinds[0] or RELATIVE in kinds[1]:
            _compare_relative(a, b, runs, kinds, top, as_json)
            return
        cmp = compare_rows(runs[0].rows, runs[1].rows, top=top)
        if cmp.common == 0:
            raise PromLocalError(f"{a} and {b} share no record ids: were they scored from the same input?")
        if as_json:
            print(json.dumps({**cmp.as_dict(), "repeated_ids_a": len(runs[0].repeated),
                              "repeated_ids_b": len(runs[1].repeated)}, indent=1, ensure_ascii=False))
            return
        console = Console(highlight=False)
        console.print(f"[bold]A[/bold] = {escape(str(a))}\n[bold]B[/bold] = {escape(str(b))}")
        console.print(comparison_view(cmp, "A", "B"))


def _compare_relative(a: Path, b: Path, runs, kinds: list[set[str]], top: int, as_json: bool) -> None:
    """Pairwise runs: how often the two name the same winner, and each against the gold winner."""
    from ..reports.pairwise import compare_relative
    from ..reports.views import relative_comparison_view

    if kinds[0] != kinds[1]:
        def says(k: set[str]) -> str:
            return " and ".join(sorted(k)) or "no"
        raise PromLocalError(f"{a} holds {says(kinds[0])} rows but {b} holds {says(kinds[1])} rows: "
                             "compare runs of the same kind (pairwise with pairwise, absolute with absolute)")
    if kinds[0] != {"relative"}:
        raise PromLocalError(f"{a} and {b} mix absolute and relative rows: compare needs files of "
                             "one kind; `prom-local report` summarises each kind of a mixed file")
    cmp = compare_relative(runs[0].rows, runs[1].rows, top=top)
    if cmp.common == 0:
        raise PromLocalError(f"{a} and {b} share no record ids: were they scored from the same input?")
    if as_json:
        print(json.dumps({**cmp.as_dict(), "mode": "relative", "repeated_ids_a": len(runs[0].repeated),
                          "repeated_ids_b": len(runs[1].repeated)}, indent=1, ensure_ascii=False))
        return
    console = Console(highlight=False)
    console.print(f"[bold]A[/bold] = {escape(str(a))}\n[bold]B[/bold] = {escape(str(b))}")
    console.print(relative_comparison_view(cmp, "A", "B"))
