"""Rich renderables for the reports' figures (absolute.py, pairwise.py, kudge.py), shared by
`report`, `compare` and the TUI.

Only presentation lives here: every number comes from those modules, so the terminal, the TUI and a
script calling them directly always agree.
"""

from __future__ import annotations

from rich.color import Color
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .absolute import Agreement, Comparison, Correlation, Summary
from .pairwise import RelativeComparison, RelativeSummary
from ..judging.rubrics import SCORES

FIGURES = (
    # (field, label); labels short enough for the TUI's side pane at 80 columns
    ("n", "pairs"),
    ("exact", "exact agreement"),
    ("within1", "within 1"),
    ("pearson", "Pearson r"),
    ("spearman", "Spearman ρ"),
    ("kendall", "Kendall τ"),
    ("qwk", "quadratic κ"),
)

# The model card's heatmap shades counts from white to deep blue (matplotlib's "Blues").
_LOW = (239, 243, 255)
_HIGH = (8, 69, 148)


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def figures_table(agree: Agreement, title: str | None = None, *, extra: Agreement | None = None,
                  headers: tuple[str, str] = ("", "")) -> Table:
    """The agreement figures; with `extra`, a second column (e.g. run B against gold)."""
    show_header = extra is not None
    table = Table(title=title, show_header=show_header, header_style="bold", box=None,
                  pad_edge=False, title_justify="left", title_style="bold")
    table.add_column("figure", no_wrap=True)
    table.add_column(headers[0] or "value", justify="right", no_wrap=True)
    if extra is not None:
        table.add_column(headers[1], justify="right", no_wrap=True)
    for key, label in FIGURES:
        cells = [label, fmt(getattr(agree, key))]
        if extra is not None:
            cells.append(fmt(getattr(extra, key)))
        table.add_row(*cells)
    return table


def figures_grid(agree: Agreement) -> Table:
    """The same figures in two columns, for narrow panes (the TUI's at 80 columns)."""
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 1, 0, 0))
    for _ in range(2):
        table.add_column(no_wrap=True, style="dim")
        table.add_column(justify="right", no_wrap=True)
    pairs = [("exact", agree.exact), ("within 1", agree.within1), ("Pearson", agree.pearson),
             ("Spearman", agree.spearman), ("Kendall τ", agree.kendall), ("QWK", agree.qwk)]
    for i in range(0, len(pairs), 2):
        (l1, v1), (l2, v2) = pairs[i], pairs[i + 1]
        table.add_row(l1, fmt(v1), "  " + l2, fmt(v2))
    return table


def correlation_table(corr: Correlation) -> RenderableType:
    """The Prometheus papers' table: Pearson, Spearman, Kendall τ with n, and what was correlated."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for label in ("n", "Pearson", "Spearman", "Kendall τ"):
        table.add_column(label, justify="right", no_wrap=True)
    table.add_row(str(corr.n), fmt(corr.pearson), fmt(corr.spearman), fmt(corr.kendall))
    return Group(Text("correlation with gold (the Prometheus papers' table)", style="bold"), table,
                 Text(f"model: {corr.predicted}   gold: {corr.gold}", style="dim"))


def uses_means(corr: Correlation | None) -> bool:
    """Whether the correlation differs from the integer-score figures (samples' or annotators' means)."""
    return corr is not None and (corr.predicted, corr.gold) != ("score", "gold_score")


def _shade(count: int, top: int) -> Style:
    if count == 0 or top == 0:
        return Style(color="grey50")
    t = 0.25 + 0.75 * count / top   # even a single count is visibly tinted
    rgb = tuple(int(lo + (hi - lo) * t) for lo, hi in zip(_LOW, _HIGH))
    foreground = "black" if t < 0.55 else "white"
    return Style(bgcolor=Color.from_rgb(*rgb), color=foreground, bold=True)


def heatmap(agree: Agreement, *, rows: str = "gold", cols: str = "predicted",
            title: str | None = None, unscored: int = 0) -> RenderableType:
    """The confusion counts as a shaded grid: `rows` scores down the side, `cols` across the top,
    the diagonal (agreement) underlined. Like the model card's gold-vs-predicted heatmap; 30 columns
    wide, so it fits the TUI's side pane at 80 columns."""
    counts = agree.confusion or [[0] * 5 for _ in SCORES]
    top = max((max(r) for r in counts), default=0)
    table = Table(box=None, padding=(0, 0), show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("", justify="right", no_wrap=True, style="bold")
    for s in SCORES:
        table.add_column(f"{s:^5}", justify="center", no_wrap=True, header_style="bold")
    table.add_column("   Σ", justify="right", no_wrap=True, style="dim", header_style="dim")
    for s, row in zip(SCORES, counts):
        cells: list[Text] = [Text(f"{s} ")]
        for c, value in zip(SCORES, row):
            text = Text(f"{value:^5}" if value < 100000 else " many", style=_shade(value, top))
            if c == s:
                text.stylize("underline")
            cells.append(text)
        cells.append(Text(f"{sum(row):>4}"))
        table.add_row(*cells)
    totals = [sum(counts[r][c] for r in range(5)) for c in range(5)]
    table.add_row(Text("Σ ", style="dim"), *[Text(f"{t:^5}", style="dim") for t in totals],
                  Text(f"{sum(totals):>4}", style="dim"))
    heading = Text(title or "", style="bold")
    heading.append(("\n" if title else "") + f"{rows} ↓  {cols} →", style="dim")
    parts: list[RenderableType] = [heading, table]
    if unscored:
        parts.append(Text(f"+{unscored} with no predicted score", style="yellow"))
    return Group(*parts)


def histogram_line(summary: Summary, *, narrow: bool = False) -> Text:
    text = Text("scores ", style="bold")
    text.append("  ".join(f"{s}:{summary.histogram[s]}" for s in SCORES))
    text.append(("\n" if narrow else "  ") + f"mean {fmt(summary.mean_score)}", style="dim")
    return text


def counts_line(summary: Summary) -> Text:
    return Text(f"rows {summary.rows} · scored {summary.scored} · forced {summary.forced} · "
                f"errors {summary.errors}")


def summary_view(summary: Summary, *, title: str | None = None, compact: bool = False) -> RenderableType:
    """What `prom-local report` prints and, `compact`, the batch screen's agreement pane shows."""
    parts: list[RenderableType] = []
    if title:
        parts.append(Text(title, style="bold"))
    if summary.gold is None:
        parts += [counts_line(summary), histogram_line(summary), Text("")]
        parts.append(Text("No gold scores: agreement figures need a gold score in the input "
                          "(orig_score, score or gold_score).", style="dim"))
        return Group(*parts)
    if compact:
        # The figures and the heatmap first: they are why this pane is open.
        parts += [Text(f"agreement with gold (n={summary.gold.n})", style="bold"),
                  figures_grid(summary.gold), Text("")]
        corr = summary.correlation
        if uses_means(corr):
            # Means (samples, several annotators) correlate differently from the integer scores.
            parts += [Text(f"{corr.predicted} vs {corr.gold} (n={corr.n})", style="bold"),
                      Text(f"Pearson {fmt(corr.pearson)}  Spearman {fmt(corr.spearman)}  "
                           f"Kendall τ {fmt(corr.kendall)}"), Text("")]
        parts += [
                  heatmap(summary.gold, unscored=summary.unscored_with_gold), Text(""),
                  counts_line(summary), histogram_line(summary, narrow=True)]
        return Group(*parts)
    parts += [counts_line(summary), histogram_line(summary), Text("")]
    if uses_means(summary.correlation):
        parts += [correlation_table(summary.correlation), Text("")]
        # A text line, not the table's title: a title wraps at the narrow table's width.
        parts += [Text("agreement with gold (integer scores)", style="bold"), figures_table(summary.gold)]
    else:
        parts.append(figures_table(summary.gold, "agreement with gold"))
    parts.append(Text(""))
    parts.append(heatmap(summary.gold, title="gold vs predicted", unscored=summary.unscored_with_gold))
    return Group(*parts)


def comparison_view(cmp: Comparison, name_a: str = "A", name_b: str = "B") -> RenderableType:
    parts: list[RenderableType] = [
        Text(f"records in both: {cmp.common}   only in {name_a}: {len(cmp.only_a)}   "
             f"only in {name_b}: {len(cmp.only_b)}   unscored: {name_a} {cmp.unscored_a}, "
             f"{name_b} {cmp.unscored_b}"),
    ]
    if cmp.gold_mismatch:
        parts.append(Text(f"{cmp.gold_mismatch} records have different gold scores in the two files: "
                          "they were probably not scored from the same input", style="yellow"))
    parts.append(Text(""))
    parts.append(figures_table(cmp.agreement, f"agreement of {name_a} with {name_b}"))
    parts.append(Text(""))
    parts.append(heatmap(cmp.agreement, rows=name_a, cols=name_b, title=f"{name_a} vs {name_b}"))
    if cmp.gold_a is not None and cmp.gold_b is not None:
        parts.append(Text(""))
        parts.append(figures_table(cmp.gold_a, "each run against gold", extra=cmp.gold_b,
                                   headers=(name_a, name_b)))
    parts.append(Text(""))
    if not cmp.disagreements:
        parts.append(Text("No record has different scores in the two runs."))
        return Group(*parts)
    table = Table(title="records that disagree most", title_justify="left", title_style="bold",
                  header_style="bold")
    table.add_column("id", overflow="fold")
    table.add_column(name_a, justify="right")
    table.add_column(name_b, justify="right")
    table.add_column("gap", justify="right")
    table.add_column(f"E[{name_a}]", justify="right")
    table.add_column(f"E[{name_b}]", justify="right")
    table.add_column("gold", justify="right")
    for d in cmp.disagreements:
        table.add_row(d.id, str(d.a), str(d.b), str(d.gap),
                      "-" if d.expected_a is None else f"{d.expected_a:.2f}",
                      "-" if d.expected_b is None else f"{d.expected_b:.2f}",
                      "-" if d.gold is None else str(d.gold))
    parts.append(table)
    return Group(*parts)


# ----------------------------------------------------------------------------------------------
# Relative (pairwise) rows.

def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def relative_view(rel: RelativeSummary, *, title: str | None = None, compact: bool = False) -> RenderableType:
    """Accuracy against the gold winner, position consistency, tie rate and calibration."""
    parts: list[RenderableType] = [Text(title, style="bold")] if title else []
    v = rel.verdicts
    verdicts = f"A {v['A']} · B {v['B']} · tie {v['tie']} · none {v['none']}"
    counts = f"relative rows {rel.rows} · forced {rel.forced} · errors {rel.errors}"
    parts.append(Text(f"{counts}\n{verdicts}" if compact else f"relative rows {rel.rows} · {verdicts} · "
                      f"forced {rel.forced} · errors {rel.errors}"))
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("detail", style="dim")
    # (wide detail, narrow detail): the TUI's side pane is about 38 columns at 80.
    acc = rel.accuracy
    rows = []
    if acc is not None:
        rows.append(("accuracy", _pct(acc.accuracy), f"n={acc.n} · {acc.ties} tie(s) counted wrong",
                     f"n={acc.n} · ties {acc.ties}"))
        rows.append(("  forced", str(acc.forced), f"right {acc.forced_correct} · unforced "
                     f"{_pct(acc.accuracy_unforced)}", f"right {acc.forced_correct}"))
    cons = rel.consistency
    if cons is not None:
        rows.append(("consistent", _pct(cons.rate), f"n={cons.n} in both orders", f"n={cons.n}"))
        rows.append(("tie rate", _pct(cons.tie_rate), "inconsistent orders = tie", ""))
    cal = rel.calibration
    if cal is not None:
        rows.append(("P(gold)", fmt(cal.mean_p_gold), f"n={cal.n} · Brier {fmt(cal.brier)} · ECE {fmt(cal.ece)}",
                     f"Brier {fmt(cal.brier)}"))
    for label, value, wide, narrow in rows:
        table.add_row(label, value, narrow if compact else wide)
    parts.append(table)
    if acc is None:
        parts.append(Text("No gold winners: accuracy needs gold_winner (or preference) in the input.",
                          style="dim"))
    if cal is not None and cal.bins and not compact:
        bins = Table(box=None, pad_edge=False, header_style="bold")
        for label in ("confidence", "n", "mean", "accuracy"):
            bins.add_column(label, justify="right", no_wrap=True)
        for b in cal.bins:
            bins.add_row(f"{b['from']:.1f}-{b['to']:.1f}", str(b["n"]), fmt(b["confidence"]), _pct(b["accuracy"]))
        parts += [Text(""), Text("calibration: accuracy by confidence max(P(A), P(B))", style="bold"), bins]
    return Group(*parts)


def file_view(summary: Summary, relative: RelativeSummary | None, *, title: str | None = None,
              compact: bool = False) -> RenderableType:
    """A results file: its absolute rows' figures, its relative rows' figures, or both."""
    if relative is None:
        return summary_view(summary, title=title, compact=compact)
    if summary.rows == 0:
        return relative_view(relative, title=title, compact=compact)
    parts = [summary_view(summary, title=title, compact=compact), Text(""), relative_view(relative, compact=compact)]
    if compact and relative.rows > summary.rows:   # a narrow pane: the main kind first
        parts.reverse()
    return Group(*parts)


def relative_comparison_view(cmp: RelativeComparison, name_a: str = "A", name_b: str = "B") -> RenderableType:
    parts: list[RenderableType] = [
        Text(f"relative records in both: {cmp.common}   only in {name_a}: {len(cmp.only_a)}   "
             f"only in {name_b}: {len(cmp.only_b)}"),
        Text(f"same winner: {cmp.same_winner} of {cmp.decided_both} decided in both ({_pct(cmp.agreement)})"),
    ]
    if cmp.gold_mismatch:
        parts.append(Text(f"{cmp.gold_mismatch} records have different gold winners in the two files: "
                          "they were probably not scored from the same input", style="yellow"))
    if cmp.accuracy_a is not None and cmp.accuracy_b is not None:
        parts.append(Text(f"accuracy against gold: {name_a} {_pct(cmp.accuracy_a.accuracy)} "
                          f"(n={cmp.accuracy_a.n}), {name_b} {_pct(cmp.accuracy_b.accuracy)} "
                          f"(n={cmp.accuracy_b.n})"))
    parts.append(Text(""))
    if not cmp.disagreements:
        parts.append(Text("No record has different verdicts in the two runs."))
        return Group(*parts)
    table = Table(title="records with different verdicts", title_justify="left", title_style="bold",
                  header_style="bold")
    table.add_column("id", overflow="fold")
    for label in (name_a, name_b, f"P(A) {name_a}", f"P(A) {name_b}", "gold"):
        table.add_column(label, justify="right")
    for d in cmp.disagreements:
        table.add_row(d["id"], d["a"], d["b"], fmt(d["p_a"]), fmt(d["p_b"]), d["gold"] or "-")
    parts.append(table)
    return Group(*parts)
