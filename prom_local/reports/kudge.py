"""KUDGE's own figures for a scored KUDGE file, beside the published rows of reference judges.

`kudge_figures` is src/pointwise_eval.py's process_pointwise_data on the same decisions:

    failure_count = decisions that are missing (NaN)      total_entries = all rows
    (the rows with a decision, from here on)
    average_error = mean(decision - human)                 signed: > 0 means the judge scores higher
    off_by_05     = mean(|decision - human| < 1)           "off by less than one point"
    pearson_corr  = scipy.stats.pearsonr(human, decision)

A row's decision is its `score` (None for an error row: KUDGE's NaN); its human score is the exact
`kudge.human_score` that kudge_files.py put in the row (final_score, or original_human_score in
the false-information subset). prom-local forces a verdict where the model wrote none, so its
failures are error rows only (a prompt too long for the context, say); forced rows are counted apart.

For the false-information subset the human score is the one the *uncorrupted* response had: a judge
that notices the false fact scores below it. `falseinfo_figures` says how often and by how much.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable

import numpy as np
from scipy import stats as sps

from ..judging.rubrics import SCORES
from .rows import ABSOLUTE, of_kind


@dataclass
class KudgeFigures:
    average_error: float | None
    off_by_05: float | None
    pearson_corr: float | None
    failure_count: int
    total_entries: int
    forced: int            # rows whose verdict prom-local forced (KUDGE would count them as failures)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FalseInfoFigures:
    n: int                 # rows with a decision
    below: int             # decision < the uncorrupted response's human score
    mean_drop: float | None          # mean(human - decision) over those below
    mean_difference: float | None    # mean(decision - human) over all n
    by_type: dict[str, dict]         # the same, per corruption type (word, sentence, general)

    def as_dict(self) -> dict:
        return asdict(self)


def kudge_rows(rows: Iterable[dict]) -> list[dict]:
    """The absolute rows that came from a KUDGE file (they carry a `kudge` object with a human score)."""
    return [r for r in of_kind(rows, ABSOLUTE) if isinstance(r.get("kudge"), dict)
            and _number(r["kudge"].get("human_score")) is not None]


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def decision(row: dict) -> float | None:
    """KUDGE's `decision` for a row: its score, None (NaN) when there is none."""
    score = row.get("score")
    return float(score) if not row.get("error") and score in SCORES else None


def kudge_figures(decisions: list[float | None], human: list[float], forced: int = 0) -> KudgeFigures:
    """process_pointwise_data's arithmetic; None where a figure is undefined (no decisions, or a
    constant side for Pearson, where scipy would give NaN)."""
    pairs = [(d, h) for d, h in zip(decisions, human) if d is not None]
    failures = len(decisions) - len(pairs)
    if not pairs:
        return KudgeFigures(None, None, None, failures, len(decisions), forced)
    d = np.array([p[0] for p in pairs], dtype=float)
    h = np.array([p[1] for p in pairs], dtype=float)
    constant = len(set(d.tolist())) < 2 or len(set(h.tolist())) < 2
    pearson = None if constant else float(sps.pearsonr(h, d).statistic)
    return KudgeFigures(float(np.mean(d - h)), float(np.mean(np.abs(d - h) < 1)),
                        pearson if pearson is None or math.isfinite(pearson) else None,
                        failures, len(decisions), forced)


def falseinfo_figures(rows: list[dict]) -> FalseInfoFigures | None:
    rows = [r for r in rows if r["kudge"].get("subset") == "falseinfo"]
    if not rows:
        return None

    def figures(group: list[dict]) -> dict:
        pairs = [(decision(r), float(r["kudge"]["human_score"])) for r in group]
        pairs = [(d, h) for d, h in pairs if d is not None]
        drops = [h - d for d, h in pairs if d < h]
        return {"n": len(pairs), "below": len(drops),
                "mean_drop": float(np.mean(drops)) if drops else None,
                "mean_difference": float(np.mean([d - h for d, h in pairs])) if pairs else None}

    types = sorted({r["kudge"].get("type") or "?" for r in rows})
    by_type = {t: figures([r for r in rows if (r["kudge"].get("type") or "?") == t]) for t in types}
    return FalseInfoFigures(**figures(rows), by_type=by_type)


@dataclass
class KudgeSummary:
    subsets: list[str]
    figures: KudgeFigures
    falseinfo: FalseInfoFigures | None

    def as_dict(self) -> dict:
        return {"subsets": self.subsets, "figures": self.figures.as_dict(),
                "falseinfo": self.falseinfo.as_dict() if self.falseinfo else None,
                "reference": reference()}


def summarise_kudge(rows: Iterable[dict]) -> KudgeSummary | None:
    """KUDGE's figures for the KUDGE rows of a results file; None when it has none."""
    rows = kudge_rows(rows)
    if not rows:
        return None
    figures = kudge_figures([decision(r) for r in rows], [float(r["kudge"]["human_score"]) for r in rows],
                            forced=sum(1 for r in rows if r.get("forced")))
    subsets = sorted({str(r["kudge"].get("subset")) for r in rows})
    return KudgeSummary(subsets, figures, falseinfo_figures(rows))


@lru_cache(maxsize=1)
def reference() -> dict:
    """The published rows (prom_local/data/kudge/reference.json: judges, their source files, the commit)."""
    text = resources.files("prom_local.data").joinpath("kudge", "reference.json").read_text("utf-8")
    return json.loads(text)


# ----------------------------------------------------------------------------------------------
# The terminal view: `prom-local report` prints it under the file's own figures.

def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def kudge_view(summary: KudgeSummary, title: str = "this run"):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    ref = reference()
    table = Table(title="KUDGE figures (src/pointwise_eval.py)", title_justify="left",
                  caption=f"reference rows: {ref['repository']} @ {ref['commit'][:12]}, report/<judge>/"
                          "pointwise_results.csv, full set (2,506 rows); one line per published run",
                  caption_justify="left")
    for name, justify in (("judge", "left"), ("n", "right"), ("failures", "right"), ("mean error", "right"),
                          ("off_by_05", "right"), ("Pearson", "right"), ("source", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    f = summary.figures
    table.add_row(f"{title} ({', '.join(summary.subsets)})", str(f.total_entries),
                  f"{f.failure_count}" + (f" (+{f.forced} forced)" if f.forced else ""),
                  _f(f.average_error), _f(f.off_by_05), _f(f.pearson_corr), "this file", style="bold")
    for judge in ref["judges"]:
        for i, run in enumerate(judge["runs"], 1):
            table.add_row(judge["name"] if i == 1 else "", str(run["total_entries"]), str(run["failure_count"]),
                          _f(run["average_error"]), _f(run["off_by_05"]), _f(run["pearson_corr"]),
                          f"{judge['source']} [{i - 1}]")
    parts = [table]
    if "falseinfo" in summary.subsets:
        parts.append(Text("the reference rows are on the full set; this run is on rows of the false-information "
                          "subset, whose human scores are those of the uncorrupted responses", style="dim"))
    if summary.falseinfo is not None:
        parts.append(_falseinfo_table(summary.falseinfo))
    return Group(*parts)


def _falseinfo_table(fi: FalseInfoFigures):
    from rich.table import Table

    table = Table(title="False information: does the judge mark the corrupted response down?",
                  title_justify="left", caption="below: the judge's score is under the human score the "
                  "uncorrupted response had; drop: by how much, over those rows", caption_justify="left")
    for name in ("corruption", "n", "below", "share", "mean drop", "mean(judge - human)"):
        table.add_column(name, justify="left" if name == "corruption" else "right")
    rows = [("all", asdict(fi))] + list(fi.by_type.items())
    for name, g in rows:
        share = g["below"] / g["n"] if g["n"] else None
        table.add_row(name, str(g["n"]), str(g["below"]), "-" if share is None else f"{share:.1%}",
                      _f(g["mean_drop"]), _f(g["mean_difference"]), style="bold" if name == "all" else None)
    return table
