"""The Textual TUI (`prom-local tui`): a shell over the library, no logic of its own."""

from .app import ModelTask, JudgeLoader, PromLocalApp

__all__ = ["ModelTask", "JudgeLoader", "PromLocalApp"]
