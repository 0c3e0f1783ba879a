"""The prom-local TUI: grade one record or review a batch, keyboard first.

The app owns the one loaded model and decides what may use it: one job at a time (a grade, a
batch run, or loading a model), so the engine is never asked for two things at once and the model
panel can always say what the model is doing. Screens run their jobs in thread workers (the engine
is blocking C code) and hear back through messages.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from ..errors import PromLocalError
from ..engine.model_info import ModelInfo
from ..store.models import list_store, store_dir
from .messages import ModelFailed, ModelLoaded, ModelStatus
from .screens.batch import BatchScreen
from .screens.grade import GradeScreen
from .screens.help import HelpScreen
from .screens.models import ModelPickerScreen

log = logging.getLogger(__name__)

# (model spec or None for the default, status callback) -> (Judge, ModelInfo); may take seconds.
JudgeLoader = Callable[[str | None, Callable[[str], None]], tuple[object, ModelInfo]]
# How long quitting waits for a cancelled job to reach its next decode step.
STOP_TIMEOUT = 60.0

_job_ids = itertools.count(1)


@dataclass
class ModelTask:
    """One piece of work on the model. `cancel` asks it to stop between decode steps; `done` is set
    by the worker thread when it no longer touches the model (so the model can be closed)."""

    kind: str
    label: str
    id: int = field(default_factory=lambda: next(_job_ids))
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class PromLocalApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "prom-local"
    MODES = {"grade": GradeScreen, "batch": BatchScreen}
    DEFAULT_MODE = "grade"
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("f2", "switch_mode('grade')", "Grade", tooltip="Go to the grade screen"),
        Binding("f3", "switch_mode('batch')", "Batch", tooltip="Go to the batch screen"),
        Binding("f4", "models", "Models", tooltip="Switch to another model in the store"),
        # Shown in help, not the footer: 80 columns are better spent on the screen's own keys.
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True, tooltip="Quit (stops a running job first)"),
    ]
    # F1 lists every key; the palette's slot in the footer is worth more at 80 columns.
    ENABLE_COMMAND_PALETTE = False

    model_info: reactive[ModelInfo | None] = reactive(None)
    model_state: reactive[str] = reactive("none")      # none | loading | ready | failed
    model_error: reactive[str | None] = reactive(None)
    activity: reactive[str] = reactive("idle")          # what the model is doing, in words

    def __init__(self, loader: JudgeLoader, *, model: str | None = None, models_dir: Path | None = None,
                 batch_input: Path | None = None, batch_output: Path | None = None,
                 load_on_start: bool = True) -> None:
        super().__init__()
        self.loader = loader
        self.model_spec = model
        self.models_dir = models_dir
        self.batch_input = batch_input
        self.batch_output = batch_output
        self.load_on_start = load_on_start
        self.judge = None
        self.job: ModelTask | None = None

    def on_mount(self) -> None:
        if self.batch_input is not None:
            self.switch_mode("batch")
        if self.load_on_start:
            self.load_model(self.model_spec)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return False   # no footer key for the screen you are on
        return True

    # -- jobs: one thing on the model at a time ----------------------------------------------------
    def start_job(self, kind: str, label: str) -> ModelTask | None:
        if self.job is not None:
            self.notify(f"The model is busy ({self.job.label}). Wait, or press Esc on that screen to "
                        "stop it.", title="Busy", severity="warning")
            return None
        if kind != "load" and self.judge is None:
            self.notify("No model is loaded: press F4 to pick one.", title="No model", severity="warning")
            return None
        self.job = ModelTask(kind, label)
        self.activity = label
        return self.job

    def end_job(self, job: ModelTask | None) -> None:
        if job is not None and self.job is job:
            self.job = None
            self.activity = "idle"

    def set_activity(self, job: ModelTask | None, text: str) -> None:
        if job is not None and self.job is job:
            job.label = text
            self.activity = text

    # -- the model ---------------------------------------------------------------------------------
    def load_model(self, spec: str | None) -> None:
        job = self.start_job("load", f"loading {spec or 'default model'}")
        if job is None:
            return
        self.model_state = "loading"
        self.model_error = None
        self.run_worker(partial(self._load_in_thread, spec, job), thread=True, exit_on_error=False,
                        group="model", name="load model")

    def _load_in_thread(self, spec: str | None, job: ModelTask) -> None:
        try:
            judge, info = self.loader(spec, lambda text: self.post_message(ModelStatus(text)))
        except PromLocalError as exc:
            self.post_message(ModelFailed(spec, str(exc)))
        except Exception as exc:
            log.exception("loading %s failed", spec)
            self.post_message(ModelFailed(spec, f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(ModelLoaded(judge, info))
        finally:
            job.done.set()

    def on_model_status(self, message: ModelStatus) -> None:
        if self.job is not None and self.job.kind == "load":
            self.activity = message.text

    def on_model_loaded(self, message: ModelLoaded) -> None:
        old, self.judge = self.judge, message.judge
        self.model_info = message.info
        self.model_state = "ready"
        self.model_error = None
        self.end_job(self.job)
        if old is not None:
            old.close()   # nothing else uses it: jobs are one at a time, and this one has ended

    def on_model_failed(self, message: ModelFailed) -> None:
        self.end_job(self.job)
        self.model_error = message.error.splitlines()[0]
        self.model_state = "ready" if self.judge is not None else "failed"
        self.notify(message.error, title=f"Cannot load {message.spec or 'the default model'}",
                    severity="error", timeout=15)

    def action_models(self) -> None:
        if isinstance(self.screen, ModelPickerScreen):
            return
        if self.job is not None:
            self.notify(f"Wait until the model is free ({self.job.label}) to switch.", severity="warning")
            return
        try:
            entries, error = list_store(self.models_dir), None
        except PromLocalError as exc:
            entries, error = [], str(exc)

        def chosen(spec: str | None) -> None:
            if spec:
                self.load_model(spec)

        self.push_screen(ModelPickerScreen(entries, store_dir(self.models_dir), self.model_info, error), chosen)

    # -- help and quitting -------------------------------------------------------------------------
    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss()
            return
        self.push_screen(HelpScreen([
            ("Everywhere", "", self.BINDINGS),
            ("Grade screen (F2)", GradeScreen.HELP, GradeScreen.BINDINGS),
            ("Batch screen (F3)", BatchScreen.HELP, BatchScreen.BINDINGS),
        ]))

    async def action_quit(self) -> None:
        job = self.job
        if job is not None and job.kind != "load":
            job.cancel.set()
            self.activity = "stopping…"
        if job is not None:
            await asyncio.to_thread(job.done.wait, STOP_TIMEOUT)
        self._close_model()
        self.exit()

    def on_unmount(self) -> None:
        # Also reached when the app ends without action_quit (tests, a signal): the model must not
        # be freed under a worker thread that is still decoding.
        if self.job is not None:
            self.job.cancel.set()
            self.job.done.wait(STOP_TIMEOUT)
        self._close_model()

    def _close_model(self) -> None:
        if self.judge is not None:
            judge, self.judge = self.judge, None
            judge.close()
