"""The detail pane: one result's score, probabilities, feedback and error, and the record itself."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from ....judging.grades import row_probabilities
from ....reports.rows import ABSOLUTE, RELATIVE, kind_of
from ....reports.pairwise import pair_probabilities, verdict
from ..probability_bars import ProbabilityBars

PREVIEW = 400


def header(row: dict) -> Text:
    text = Text()
    text.append(f"#{row['id']}", style="bold")
    if row.get("pending"):
        text.append("  not graded yet", style="dim")
        return text
    return _HEADERS[kind_of(row)](row, text)


def absolute_header(row: dict, text: Text) -> Text:
    """Score, gold score, forced and the expected score."""
    score, gold = row.get("score"), row.get("gold_score")
    text.append("  score ", style="dim")
    text.append("-" if score is None else str(score), style="bold")
    if gold is not None:
        text.append("  gold ", style="dim")
        text.append(str(gold), style="bold red" if score is not None and score != gold else "bold green")
    if row.get("forced"):
        text.append("  forced", style="bold yellow")
    if row.get("expected_score") is not None:
        text.append(f"  E={row['expected_score']:.2f}", style="dim")
    return text


def relative_header(row: dict, text: Text) -> Text:
    """Winner, gold winner, P(A)/P(B) and, for --both-orders rows, each order's verdict."""
    shown, gold = verdict(row), row.get("gold_winner")
    text.append("  winner ", style="dim")
    text.append({"none": "-", "tie": "tie"}.get(shown, shown), style="bold")
    if gold is not None:
        text.append("  gold ", style="dim")
        text.append(str(gold), style="bold green" if shown == gold else "bold red")
    if row.get("forced"):
        text.append("  forced", style="bold yellow")
    probs = pair_probabilities(row)
    if probs is not None:
        text.append(f"\nP(A)={probs[0]:.2f}  P(B)={probs[1]:.2f}", style="dim")
    orders = row.get("orders")
    if isinstance(orders, list) and orders:
        consistent = row.get("consistent")
        text.append("\nconsistent" if consistent else "\ninconsistent (a tie)",
                    style="green" if consistent else "yellow")
        for order in orders:
            if isinstance(order, dict):
                text.append(f"  {order.get('order', '?')}: {order.get('winner') or '-'}", style="dim")
    return text


_HEADERS = {ABSOLUTE: absolute_header, RELATIVE: relative_header}


def _record_texts(record) -> list[tuple[str, str]]:
    """The record's texts, for absolute records (response) and pairwise ones (response_A/_B)."""
    fields = (("Instruction", "instruction"), ("Response", "response"),
              ("Response A", "response_A"), ("Response B", "response_B"))
    return [(label, value) for label, name in fields
            if isinstance(value := getattr(record, name, None), str)]


def body(row: dict, record) -> Text:
    text = Text()
    if row.get("error"):
        text.append(row["error"] + "\n\n", style="red")
    feedback = row.get("feedback")
    if feedback:
        text.append("Feedback\n", style="bold")
        text.append(feedback + "\n\n")
    if record is not None:
        for label, value in _record_texts(record):
            text.append(f"{label}\n", style="bold dim")
            shown = value if len(value) <= PREVIEW else value[:PREVIEW] + "…"
            text.append(shown + "\n\n", style="dim")
    return text


class DetailPane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static(Text("Select a row to see its feedback.", style="dim"), id="detail-header")
        yield ProbabilityBars(id="detail-probabilities")
        yield Static("", id="detail-body")

    def on_mount(self) -> None:
        self.show(None)

    def show(self, row: dict | None, record=None) -> None:
        bars = self.query_one("#detail-probabilities", ProbabilityBars)
        if row is None:
            self.query_one("#detail-header", Static).update(Text("Select a row to see its feedback.", style="dim"))
            bars.show(None, None)
            bars.display = False
            self.query_one("#detail-body", Static).update("")
            return
        self.query_one("#detail-header", Static).update(header(row))
        values = row_probabilities(row)
        bars.display = values is not None
        bars.show(values, row.get("score"))
        self.query_one("#detail-body", Static).update(body(row, record))
        self.scroll_home(animate=False)
