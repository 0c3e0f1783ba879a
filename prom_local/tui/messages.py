"""Messages between the TUI's parts. Worker threads post these (post_message is thread-safe); widgets
never reach into each other, they post a message and the screen that owns both decides.

Every message from a job carries the job's id, so a late token of a cancelled grade can never land
in the next one's feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message as _Message


class Message(_Message, bubble=False):
    """Messages here go to the screen or app that started the work, and stop there."""

from ..judging.grades import Grade
from ..engine.model_info import ModelInfo


# -- the model ------------------------------------------------------------------------------------

class ModelStatus(Message):
    """A line from the engine while a model loads (offload plan, retries)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ModelLoaded(Message):
    def __init__(self, judge, info: ModelInfo) -> None:
        super().__init__()
        self.judge = judge
        self.info = info


class ModelFailed(Message):
    def __init__(self, spec: str | None, error: str) -> None:
        super().__init__()
        self.spec = spec
        self.error = error


# -- the grade screen ----------------------------------------------------------------------------

class FeedbackToken(Message):
    def __init__(self, job: int, text: str) -> None:
        super().__init__()
        self.job = job
        self.text = text


class GradeFinished(Message):
    def __init__(self, job: int, grade: Grade) -> None:
        super().__init__()
        self.job = job
        self.grade = grade


class GradeFailed(Message):
    def __init__(self, job: int, error: str) -> None:
        super().__init__()
        self.job = job
        self.error = error


# -- the batch screen ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    done: int            # rows in the output (already there + graded now)
    graded: int          # graded in this run
    skipped: int
    errors: int
    elapsed: float
    tokens_per_second: float
    generated_per_second: float

    @property
    def records_per_minute(self) -> float:
        return self.graded / self.elapsed * 60 if self.elapsed > 0 else 0.0


class BatchOpened(Message):
    def __init__(self, input_path: Path, output_path: Path, items: list,
                 rows: list[dict], note: str | None) -> None:
        super().__init__()
        self.input_path = input_path
        self.output_path = output_path
        self.items = items          # Record or InputError, in input order
        self.rows = rows            # rows already in the output file
        self.note = note            # e.g. "torn last line will be repaired on run"


class BatchOpenFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class BatchRow(Message):
    def __init__(self, job: int, row: dict, progress: Progress) -> None:
        super().__init__()
        self.job = job
        self.row = row
        self.progress = progress


class BatchActivity(Message):
    """Which record the model is writing feedback for right now."""

    def __init__(self, job: int, record_id: str) -> None:
        super().__init__()
        self.job = job
        self.record_id = record_id


class BatchFinished(Message):
    def __init__(self, job: int, progress: Progress | None, cancelled: bool, error: str | None) -> None:
        super().__init__()
        self.job = job
        self.progress = progress
        self.cancelled = cancelled
        self.error = error
