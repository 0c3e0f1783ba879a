"""The gold-vs-predicted heatmap as a PNG, like the one on the model card (needs the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExitCode, OutputError, PromLocalError
from .absolute import Agreement
from ..judging.rubrics import SCORES


class PlotUnavailable(PromLocalError):
    exit_code = ExitCode.CONVERT   # the plot extra missing: an install problem, as convert's are


def save_heatmap_png(agree: Agreement, path: str | Path, *, rows: str = "gold",
                     cols: str = "predicted", title: str | None = None) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--png needs matplotlib: pip install 'prom-local[plot]'") from None
    matplotlib.use("Agg")  # no display needed, and never pops a window from a CLI
    import matplotlib.pyplot as plt

    counts = agree.confusion or [[0] * 5 for _ in SCORES]
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    try:
        image = ax.imshow(counts, cmap="Blues")
        top = max(max(r) for r in counts) or 1
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center",
                        color="white" if value > top / 2 else "black")
        ax.set_xticks(range(5), [str(s) for s in SCORES])
        ax.set_yticks(range(5), [str(s) for s in SCORES])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        ax.set_title(title or f"{rows} vs {cols} (n={agree.n})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        out = Path(path)
        try:
            fig.savefig(out, format="png")
        except OSError as exc:
            raise OutputError(f"{out}: cannot write the PNG ({exc.strerror or exc})") from None
        return out
    finally:
        plt.close(fig)
