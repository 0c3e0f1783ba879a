"""Helpers for the TUI tests: a real app on SmolLM2, waiting on its state, and text snapshots.

Snapshots are the screen as plain text (what a person reads), compared with files under
tests/snapshots/. A missing snapshot is a failure like a different one, on every machine: a test
that wrote its own expectation could not fail. To (re)write snapshots after a deliberate change,
opt in explicitly and review the diff before committing:

    PROM_LOCAL_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_tui_snapshots.py
"""

from __future__ import annotations

import asyncio
import difflib
import io
import os
import re
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console

from assets import smollm2_gguf
from fake_engine import FakeEngine, Reply
from prom_local.cli.options import EngineOptions
from prom_local.cli.tui_cmd import make_loader
from prom_local.engine import SamplingParams
from prom_local.judging.judge import Judge
from prom_local.store.models import resolve_model
from prom_local.judging.rubrics import Rubric
from prom_local.tui import PromLocalApp

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("PROM_LOCAL_UPDATE_SNAPSHOTS") == "1"

# A short English rubric keeps prompts near 230 tokens, so one grade is about a second on CPU.
SHORT_RUBRIC = Rubric("Is the answer correct?", ("wrong", "mostly wrong", "partly right",
                                                 "right with a slip", "fully right"))


def engine_options(max_tokens: int = 12, **overrides) -> EngineOptions:
    # One thread: the test machine has two cores and the UI loop needs one of them.
    base = dict(model=str(smollm2_gguf()), ctx=1024, gpu_layers="0", threads=1, max_tokens=max_tokens)
    base.update(overrides)
    return EngineOptions(**base)


def make_app(opts: EngineOptions | None = None, **kwargs) -> PromLocalApp:
    opts = opts or engine_options()
    kwargs.setdefault("model", opts.model)
    kwargs.setdefault("models_dir", opts.models_dir)
    return PromLocalApp(make_loader(opts), **kwargs)


def make_fake_app(reply: Reply | None = None, *, max_tokens: int = 12, **kwargs) -> PromLocalApp:
    """The app on a scripted engine (tests/fake_engine.py) over SmolLM2's vocabulary: the UI's
    flow without decoding, for tests about keys, screens and jobs rather than the model's numbers."""

    def load(spec, on_status):
        resolved = resolve_model(spec or smollm2_gguf(), kwargs.get("models_dir"))
        on_status(f"model: {resolved.path}")
        judge = Judge.with_engine(FakeEngine(resolved.path, reply), sampling=SamplingParams(max_tokens=max_tokens))
        return judge, judge.model_info(resolved)

    kwargs.setdefault("model", str(smollm2_gguf()))
    return PromLocalApp(load, **kwargs)


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


async def wait_model(pilot, app, timeout: float = 60.0) -> None:
    await wait_for(pilot, lambda: app.model_state in ("ready", "failed") and app.job is None,
                   timeout, "the model to load")
    assert app.model_state == "ready", app.model_error


def screen_text(app) -> str:
    """The screen as a person reads it, one line per row, trailing spaces cut."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    lines = console.export_text(styles=False).splitlines()[:height]
    return "\n".join(line.rstrip() for line in lines)


async def settled_text(pilot, app, timeout: float = 10.0) -> str:
    """The screen once it has stopped changing and the footer has drawn: on a busy machine a
    fixed pause can catch Textual halfway through laying out a screen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await pilot.pause()
    previous = screen_text(app)
    while True:
        await pilot.pause(0.1)
        current = screen_text(app)
        footer = current.splitlines()[-1].strip() if current.splitlines() else ""
        if current == previous and footer and len(current.splitlines()) == app.size[1]:
            return current
        if loop.time() > deadline:
            raise AssertionError(f"the screen did not settle within {timeout:.0f} s:\n{current}")
        previous = current


def assert_fits(app) -> None:
    """Every row is exactly as wide as the terminal: wide (Korean) characters measured right."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    lines = console.export_text(styles=False).splitlines()[:height]
    assert len(lines) == height
    bad = [(i, cell_len(line)) for i, line in enumerate(lines) if cell_len(line) != width]
    assert not bad, f"rows whose width is not {width}: {bad}"


def check_snapshot(name: str, text: str, masks: tuple[tuple[str, str], ...] = ()) -> None:
    for pattern, replacement in masks:
        text = re.sub(pattern, replacement, text)
    path = SNAPSHOTS / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(f"snapshot {path.name} is missing: write it with PROM_LOCAL_UPDATE_SNAPSHOTS=1, "
                             f"then review and commit it. The screen was:\n{text}")
    expected = path.read_text(encoding="utf-8").rstrip("\n")
    if text != expected:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), text.splitlines(),
                                              "snapshot", "screen", lineterm=""))
        raise AssertionError(f"screen differs from {path.name} "
                             f"(PROM_LOCAL_UPDATE_SNAPSHOTS=1 rewrites it):\n{diff}")
