"""`prom-local report`: agreement figures and a heatmap for any scored file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import ExitCode
from ..runs.results_reader import read_results
from .options import err_console


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        # readable=False: the reader says what is wrong with the file, with the same exit code (4)
        # whether it is missing, a folder or unreadable.
        results: Annotated[Path, typer.Argument(help="A results JSONL written by `score` or the TUI.",
                                                readable=False)],
        png: Annotated[Optional[Path], typer.Option(
            "--png", help="Also save the gold-vs-predicted heatmap as a PNG (needs the plot extra).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON instead.")] = False,
    ) -> None:
        """Agreement with gold and a gold-vs-predicted heatmap for a scored file.

        An id written more than once (files joined by hand, or two runs that appended to the same
        file before results files were locked) is counted once, by its first row, with a warning.

        Absolute rows: the score histogram; the Prometheus papers' correlation table (Pearson,
        Spearman, Kendall τ with n) between the model's scores (mean_score with --samples) and the
        gold (gold_mean for benchmark files, else gold_score); exact agreement, within 1, the same
        correlations on the integer scores and quadratic-weighted κ; and the heatmap of gold (rows)
        against predicted (columns) scores.

        Relative rows: accuracy against gold_winner (ties and forced verdicts counted and shown),
        position consistency and tie rate for --both-orders rows, and P(A)/P(B) calibration. A file
        with both kinds gets both sections.

        KUDGE files (kudge_files.py): also KUDGE's own figures (signed mean error, share off by
        less than 1, Pearson, failures, n; as its src/pointwise_eval.py) beside the published runs of
        GPT-4o, Claude, prometheus-7b/8x7b-v2.0 and Llama-3-8B-Instruct, and for the
        false-information subset how often and by how much the judge scores below the human score
        of the uncorrupted response. --json adds them under "kudge".
        """
        # Imported here: scipy costs ~0.8 s that `--help` and the other commands should not pay.
        from ..reports.absolute import summarise
        from ..reports.pairwise import summarise_relative
        from ..reports.views import file_view

        from ..reports.kudge import kudge_view, summarise_kudge

        read = read_results(results)
        if read.repeated:   # counted once each; say so, since the figures differ from a plain count
            err_console.print(f"warning: {read.warning()}", style="yellow", markup=False)
        summary = summarise(read.rows)
        relative = summarise_relative(read.rows)
        kudge = summarise_kudge(read.rows)   # None unless the input was a KUDGE CSV
        if as_json:
            print(json.dumps({**summary.as_dict(), "relative": relative.as_dict() if relative else None,
                              "repeated_ids": len(read.repeated)}
                             | ({"kudge": kudge.as_dict()} if kudge else {}), indent=1, ensure_ascii=False))
        else:
            console = Console(highlight=False)
            console.print(file_view(summary, relative, title=str(results)))
            if kudge is not None:
                console.print(kudge_view(kudge))
        if png is not None:
            if summary.gold is None:
                err_console.print(f"[yellow]{results} has no gold scores: no heatmap to save[/yellow]")
                raise typer.Exit(ExitCode.USAGE)
            from ..reports.plot import save_heatmap_png

            save_heatmap_png(summary.gold, png, title=f"{results.name}: gold vs predicted "
                             f"(n={summary.gold.n})")
            err_console.print(f"saved {png}")
