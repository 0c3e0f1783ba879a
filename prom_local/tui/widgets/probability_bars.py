"""P(score = 1..5) as five horizontal bars, the chosen score highlighted. Used by both screens."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from ...judging.rubrics import SCORES

EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(fraction: float, width: int) -> str:
    """A bar `fraction` of `width` cells long, in eighth-cell steps."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


class ProbabilityBars(Widget):
    DEFAULT_CSS = """
    ProbabilityBars { height: 5; }
    """

    probabilities: reactive[tuple[float, ...] | None] = reactive(None)
    chosen: reactive[int | None] = reactive(None)

    def show(self, probabilities: Sequence[float] | None, chosen: int | None) -> None:
        self.probabilities = tuple(probabilities) if probabilities else None
        self.chosen = chosen

    def render(self) -> Text:
        width = max(self.size.width - 8, 4)   # "5 " + bar + " 0.00"
        out = Text(no_wrap=True)
        for s in SCORES:
            p = self.probabilities[s - 1] if self.probabilities else None
            picked = s == self.chosen
            out.append(f"{s} ", style="bold" if picked else "dim")
            if p is None:
                out.append(" " * width)
                out.append("   -")
            else:
                out.append(bar(p, width), style="bold green" if picked else "cyan")
                out.append(f" {p:.2f}", style="bold" if picked else "")
            if s != SCORES[-1]:
                out.append("\n")
        return out
