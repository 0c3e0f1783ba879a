"""Rich rendering of report.Summary / Agreement, shared by `score`, `report` and `compare`."""

from __future__ import annotations

from rich.table import Table

from ..report import Agreement, Summary
from ..rubrics import SCORES
from .options import err_console


def _fmt(value) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def agreement_table(agree: Agreement, title: str, rows_label: str = "gold", cols_label: str = "pred") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "exact", "within1", "pearson", "spearman", "kendall", "qwk"):
        table.add_row(key, _fmt(getattr(agree, key)))
    return table


def confusion_table(agree: Agreement, rows_label: str = "gold", cols_label: str = "pred") -> Table:
    table = Table(title=f"confusion ({rows_label} rows x {cols_label} columns)")
    table.add_column(f"{rows_label}\\{cols_label}")
    for s in SCORES:
        table.add_column(str(s), justify="right")
    for s, row in zip(SCORES, agree.confusion):
        table.add_row(str(s), *[str(v) for v in row])
    return table


def print_summary(summary: Summary, stats=None) -> None:
    hist = "  ".join(f"{s}: {summary.histogram[s]}" for s in SCORES)
    err_console.print(f"[bold]scores[/bold]  {hist}   mean {_fmt(summary.mean_score)}")
    err_console.print(f"rows {summary.rows}  scored {summary.scored}  forced {summary.forced}  "
                      f"errors {summary.errors}")
    if stats is not None and stats.graded:
        err_console.print(f"throughput  {stats.graded / stats.elapsed * 60:.1f} records/min  "
                          f"{stats.tokens_per_second:,.0f} tok/s  "
                          f"(prompt tokens reused from cache: {stats.reused_prompt_tokens})")
    if summary.gold is not None:
        err_console.print(agreement_table(summary.gold, "agreement with gold scores"))
        err_console.print(confusion_table(summary.gold))
