"""Open a JSONL input for the batch screen: type a path or pick one from the tree."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Input, Label, Static

from ...runs.score_file import default_output


class JsonlTree(DirectoryTree):
    def filter_paths(self, paths):
        # Hidden folders and result files (*.prom.jsonl) would only be noise when picking an input.
        return [p for p in paths if not p.name.startswith(".") and
                (p.is_dir() or (p.suffix == ".jsonl" and not p.name.endswith(".prom.jsonl")))]


class OpenFileScreen(ModalScreen[tuple[Path, Path] | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, start: Path | None = None, output: Path | None = None) -> None:
        super().__init__()
        self.start = start
        self.output = output

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog open-file"):
            yield Label("Open a JSONL file to grade", classes="dialog-title")
            yield Input(str(self.start) if self.start else "", placeholder="path/to/records.jsonl",
                        id="input-path")
            yield Input(str(self.output) if self.output else "",
                        placeholder="results file (default: INPUT.prom.jsonl, resumable)", id="output-path")
            yield Static("", id="open-error", classes="error")
            yield JsonlTree(Path.cwd(), id="tree")
            yield Static("Enter opens · Tab moves · Esc cancels", classes="dim")

    def on_mount(self) -> None:
        self.query_one("#input-path", Input).focus()

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        path = event.path
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            pass
        self.query_one("#input-path", Input).value = str(path)
        self.query_one("#input-path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        raw = self.query_one("#input-path", Input).value.strip()
        error = self.query_one("#open-error", Static)
        if not raw:
            error.update("Give the path of a JSONL file.")
            return
        path = Path(raw).expanduser()
        if not path.is_file():
            error.update(f"{path}: no such file")
            return
        out_raw = self.query_one("#output-path", Input).value.strip()
        output = Path(out_raw).expanduser() if out_raw else Path(default_output(path))
        if output.resolve() == path.resolve():
            error.update("The results file must not be the input file.")
            return
        self.dismiss((path, output))
