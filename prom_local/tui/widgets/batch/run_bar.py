"""The batch run's header: which file, where results go, a progress bar and the current speed."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from ...messages import Progress


class RunBar(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(Text("No file open: ^o opens a JSONL file to grade.", style="dim"), id="run-files")
        with Horizontal(id="run-progress-row"):
            yield ProgressBar(total=None, show_eta=False, id="run-progress")
            yield Static("", id="run-count")
            yield Static("", id="run-status")

    def on_mount(self) -> None:
        self.query_one("#run-progress-row").display = False

    def show_files(self, input_path: Path, output_path: Path, n_records: int, n_done: int) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(str(input_path), style="bold")
        text.append(" → ", style="dim")
        text.append(str(output_path))
        self.query_one("#run-files", Static).update(text)
        self.query_one("#run-progress-row").display = True
        self.set_progress(n_done, n_records)

    def set_progress(self, done: int, total: int) -> None:
        self.query_one("#run-progress", ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one("#run-count", Static).update(f"{done}/{total}")

    def set_status(self, text: Text | str) -> None:
        self.query_one("#run-status", Static).update(text)

    @staticmethod
    def speed(progress: Progress, current: str | None) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{progress.records_per_minute:.1f} rec/min · {progress.tokens_per_second:,.0f} tok/s")
        if current:
            text.append(f" · #{current}", style="yellow")
        return text
