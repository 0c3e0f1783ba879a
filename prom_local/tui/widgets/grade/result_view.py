"""The grade result: the score large, P(1..5) as bars, whether it was forced, speed, and the
feedback as it streams in."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Digits, Label, Static

from ....judging.grades import Grade
from ..probability_bars import ProbabilityBars


def speed_text(grade: Grade) -> Text:
    first = grade.first_token_seconds
    rate = grade.tokens_per_second
    text = Text()
    text.append("first token ", style="dim")
    text.append("-" if first is None else f"{first:.2f} s")
    text.append(" · ", style="dim")
    text.append("-" if rate is None else f"{rate:.1f} tok/s")
    text.append("\n")
    text.append(f"{grade.completion_tokens} tokens written, {grade.prompt_tokens} in the prompt", style="dim")
    return text


def note_text(grade: Grade) -> Text:
    if grade.error:
        return Text("cancelled" if grade.error == "cancelled" else "error", style="bold red")
    text = Text("of 5", style="bold")
    if grade.forced:
        text.append("  forced", style="bold yellow")
        text.append("\nno [RESULT] written: the\nmost likely score is shown", style="yellow")
    elif grade.finish_reason == "length":
        text.append("\nstopped at --max-tokens", style="yellow")
    return text


class ResultView(Vertical):
    def on_mount(self) -> None:
        self.border_title = "Result"

    def compose(self) -> ComposeResult:
        with Horizontal(id="score-row"):
            yield Digits("-", id="score")
            yield Static(Text("not graded yet", style="dim"), id="score-note")
        yield ProbabilityBars(id="probabilities")
        yield Static("", id="speed")
        yield Label("Feedback", classes="field-label")
        with VerticalScroll(id="feedback-scroll"):
            yield Static("", id="feedback")

    _text = ""

    def begin(self) -> None:
        self._text = ""
        self.query_one("#score", Digits).update("-")
        self.query_one("#score-note", Static).update(Text("grading…\nEsc cancels", style="yellow"))
        self.query_one(ProbabilityBars).show(None, None)
        self.query_one("#speed", Static).update(Text("waiting for the first token…", style="dim"))
        self.query_one("#feedback", Static).update("")
        self.add_class("-running")

    def add_token(self, piece: str) -> None:
        if not self._text:
            self.query_one("#speed", Static).update(Text("writing feedback…", style="dim"))
        self._text += piece
        self.query_one("#feedback", Static).update(Text(self._text))
        self.query_one("#feedback-scroll", VerticalScroll).scroll_end(animate=False)

    def show(self, grade: Grade) -> None:
        self.remove_class("-running")
        score = self.query_one("#score", Digits)
        score.update(str(grade.score) if grade.score is not None else "-")
        score.set_class(grade.forced, "-forced")
        self.query_one("#score-note", Static).update(note_text(grade))
        self.query_one(ProbabilityBars).show(grade.probabilities, grade.score)
        self.query_one("#speed", Static).update(speed_text(grade))
        # The parsed feedback, not the raw stream: the `[RESULT] N` tail is shown above as the score.
        feedback = grade.feedback if grade.error != "cancelled" else self._text
        self._text = feedback
        self.query_one("#feedback", Static).update(Text(feedback) if feedback else
                                                   Text("(no feedback text)", style="dim"))

    def fail(self, error: str) -> None:
        self.remove_class("-running")
        self.query_one("#score", Digits).update("-")
        self.query_one("#score-note", Static).update(Text("failed", style="bold red"))
        self.query_one("#speed", Static).update(Text(error, style="red"))

    @property
    def feedback(self) -> str:
        return self._text
