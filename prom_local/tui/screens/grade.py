"""The grade screen: one record, a rubric, and the judge's feedback streaming in."""

from __future__ import annotations

import logging
from functools import partial

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Select, TextArea

from ...errors import InputError, PromLocalError
from ...judging.records import record_from_mapping
from ...judging.rubrics import Rubric, presets
from ...store.user_rubrics import load_user_rubrics, save_user_rubric
from ..messages import FeedbackToken, GradeFailed, GradeFinished
from ..widgets.grade.record_form import RecordForm
from ..widgets.grade.result_view import ResultView
from ..widgets.grade.rubric_editor import RubricEditor, option_value
from ..widgets.model_panel import ModelPanel
from .save_rubric import SaveRubricScreen

log = logging.getLogger(__name__)
SOURCE = "grade form"
DEFAULT_PRESET = "helpfulness"


class GradeScreen(Screen):
    BINDINGS = [
        # priority: these must work while the cursor is in a text field
        Binding("ctrl+r", "grade", "Grade", priority=True),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save_rubric", "Save rubric", priority=True),
        Binding("ctrl+n", "new_record", "Clear", priority=True),
        Binding("ctrl+t", "pick_rubric", "Pick a rubric", show=False, priority=True),
    ]
    HELP = "Fill in a record and a rubric, grade it, and read the feedback as the model writes it."

    def __init__(self) -> None:
        super().__init__()
        self.job = None
        self.last_grade = None   # the Grade on screen, for anyone who wants more than is shown

    def compose(self) -> ComposeResult:
        try:
            mine = load_user_rubrics()
            self._rubric_error = None
        except PromLocalError as exc:
            mine, self._rubric_error = {}, str(exc)
        yield ModelPanel()
        with Horizontal(id="grade-body"):
            with VerticalScroll(id="grade-form"):
                yield RecordForm()
                yield RubricEditor(presets(), mine, selected=option_value("preset", DEFAULT_PRESET))
            yield ResultView(id="result")
        yield Footer()

    def on_mount(self) -> None:
        if self._rubric_error:
            self.notify(f"Saved rubrics not loaded: {self._rubric_error}", severity="error", timeout=10)
        self.query_one("#instruction", TextArea).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.job is not None
        if action == "grade":
            return None if self.job is not None else True
        return True

    # -- grading ----------------------------------------------------------------------------------
    def action_grade(self) -> None:
        if self.job is not None:
            return
        data = {"id": "tui", **self.query_one(RecordForm).values(), **self.query_one(RubricEditor).values()}
        try:
            record = record_from_mapping(data, line=1, source=SOURCE)
        except InputError as err:
            self._show_input_error(err)
            return
        job = self.app.start_job("grade", "grading")
        if job is None:
            return
        self.job = job
        self.refresh_bindings()
        self.query_one(ResultView).begin()
        self.run_worker(partial(self._grade_in_thread, self.app.judge, record, job), thread=True,
                        exit_on_error=False, group="grade", name="grade")

    def _grade_in_thread(self, judge, record, job) -> None:
        try:
            grade = judge.grade(record, on_token=lambda text: self.post_message(FeedbackToken(job.id, text)),
                                cancel=job.cancel)
        except PromLocalError as exc:
            self.post_message(GradeFailed(job.id, str(exc)))
        except Exception as exc:  # a bug, but the app must stay usable: show it, log the traceback
            log.exception("grading failed")
            self.post_message(GradeFailed(job.id, f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(GradeFinished(job.id, grade))
        finally:
            job.done.set()

    def _current(self, job_id: int) -> bool:
        return self.job is not None and self.job.id == job_id

    def on_feedback_token(self, message: FeedbackToken) -> None:
        if self._current(message.job):
            self.query_one(ResultView).add_token(message.text)

    def on_grade_finished(self, message: GradeFinished) -> None:
        if not self._current(message.job):
            return
        self._end_job()
        self.last_grade = message.grade
        self.query_one(ResultView).show(message.grade)
        if message.grade.error and message.grade.error != "cancelled":
            self.notify(message.grade.error, severity="error", timeout=8)

    def on_grade_failed(self, message: GradeFailed) -> None:
        if not self._current(message.job):
            return
        self._end_job()
        self.query_one(ResultView).fail(message.error)
        self.notify(message.error, title="Grading failed", severity="error", timeout=10)

    def _end_job(self) -> None:
        self.app.end_job(self.job)
        self.job = None
        self.refresh_bindings()

    def action_cancel(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
            self.app.set_activity(self.job, "cancelling…")

    def _show_input_error(self, err: InputError) -> None:
        field = (err.field or "").removeprefix("orig_").removeprefix("rubric.")
        label = field.replace("_", " ") if field else "record"
        self.notify(f"{label}: {err.message}", title="Cannot grade yet", severity="warning")
        try:
            self.query_one(f"#{field}").focus()
        except Exception:
            pass

    # -- the form ---------------------------------------------------------------------------------
    def action_new_record(self) -> None:
        self.query_one(RecordForm).clear()
        self.query_one("#instruction", TextArea).focus()

    def action_pick_rubric(self) -> None:
        picker = self.query_one("#rubric-preset", Select)
        picker.focus()
        picker.expanded = True

    def action_save_rubric(self) -> None:
        values = self.query_one(RubricEditor).values()
        try:
            rubric = Rubric.from_mapping(values)
        except KeyError as exc:
            field = exc.args[0]
            self.notify(f"{field.replace('_', ' ')} is empty: a rubric needs all six fields",
                        title="Cannot save rubric", severity="warning")
            self.query_one(f"#{field}").focus()
            return

        def save(name: str | None) -> None:
            if not name:
                return
            try:
                path = save_user_rubric(name, rubric)
                mine = load_user_rubrics()
            except PromLocalError as exc:
                self.notify(str(exc), title="Cannot save rubric", severity="error")
                return
            self.query_one(RubricEditor).set_saved(mine, select=name.strip())
            self.notify(f"Saved rubric {name.strip()!r} to {path}")

        self.app.push_screen(SaveRubricScreen(), save)
