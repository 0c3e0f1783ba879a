"""The Textual TUI (`prom-local tui`): a shell over the library, no logic of its own."""

from .app import Job, JudgeLoader, PromLocalApp

__all__ = ["Job", "JudgeLoader", "PromLocalApp"]
