"""The model panel: one line at the top of every screen saying which model is loaded, how, and
what it is doing now. It only watches the app's state; switching models is the app's action (F4)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from ...engine.model_info import ModelInfo


def describe(info: ModelInfo | None, state: str, error: str | None) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    if info is None:
        if state == "loading":
            text.append("loading model…", style="bold")
        elif state == "failed":
            # The way out first: the error (often a long path) is what gets cut at 80 columns.
            text.append("no model", style="bold red")
            text.append(" · F4 picks one · ", style="dim")
            text.append(error or "loading failed", style="red")
        else:
            text.append("no model loaded", style="bold yellow")
            text.append("  F4 picks one", style="dim")
        return text
    text.append(info.name, style="bold")
    text.append(f" {info.quant or '?'}", style="bold cyan")
    sized = f" for {info.ctx_source}" if info.ctx_source else ""
    text.append(f" · {info.size} · GPU {info.layers_on_gpu}/{info.n_layer} · ctx {info.n_ctx}{sized}"
                f" · {info.backend} build")
    return text


def activity_text(state: str, activity: str) -> Text:
    busy = state == "loading" or (activity and activity != "idle")
    text = Text(no_wrap=True, overflow="ellipsis", justify="right")
    text.append("● ", style="bold yellow" if busy else ("bold green" if state == "ready" else "dim"))
    text.append(activity or "idle", style="yellow" if busy else "")
    return text


class ModelPanel(Horizontal):
    DEFAULT_CSS = """
    ModelPanel { height: 1; }
    /* One line, cut with an ellipsis: a long path must not wrap out of sight. */
    ModelPanel Static { text-wrap: nowrap; text-overflow: ellipsis; }
    ModelPanel #model-name { width: 1fr; }
    ModelPanel #model-activity { width: auto; max-width: 40; padding: 0 0 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="model-name")
        yield Static(id="model-activity")

    def on_mount(self) -> None:
        for name in ("model_info", "model_state", "activity", "model_error"):
            self.watch(self.app, name, self._changed, init=False)
        self._changed()

    def _changed(self, *_: object) -> None:
        app = self.app
        self.query_one("#model-name", Static).update(describe(app.model_info, app.model_state, app.model_error))
        self.query_one("#model-activity", Static).update(activity_text(app.model_state, app.activity))
        info = app.model_info
        self.tooltip = f"{info.path}\n{info.offload}" if info else None
