"""The grade screen driven by Textual's Pilot: against the real engine (SmolLM2-135M on CPU) where
the model's numbers are the point (marked slow), else on the scripted engine (tests/fake_engine.py)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import pytest

from assets import smollm2_gguf
from fake_engine import Reply
from prom_local.tui.messages import FeedbackToken
from prom_local.tui.screens.help import HelpScreen
from prom_local.tui.screens.models import ModelPickerScreen
from prom_local.tui.screens.save_rubric import SaveRubricScreen
from prom_local.tui.widgets.grade.result_view import ResultView
from prom_local.store.user_rubrics import load_user_rubrics, save_user_rubric
from tui_support import (SHORT_RUBRIC, engine_options, make_app, make_fake_app, screen_text, settled_text,
                         wait_for, wait_model)

# Saved rubrics go to conftest's fresh per-test folder (PROM_LOCAL_CONFIG_DIR), never the user's.


def record_activity(app) -> list[str]:
    """Every value app.activity takes from now on. A job's state lasts as long as the job: on a
    fast machine a whole grade can start and end while one key press is processed, so tests look
    at the history, never at the value at one instant."""
    seen: list[str] = []
    app.watch(app, "activity", lambda value: seen.append(value), init=False)
    return seen


async def pick_short_rubric(pilot, app) -> None:
    """Choose the saved short rubric with the keyboard: ^t opens the picker, typing jumps to it."""
    await pilot.press("ctrl+t")
    await wait_for(pilot, lambda: app.screen.query_one("#rubric-preset").expanded, 5, "the rubric picker")
    await pilot.press(*"mine")
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen.query_one("#criteria").text == SHORT_RUBRIC.criteria,
                   5, "the saved rubric to fill the fields")


@pytest.mark.slow
def test_type_a_record_grade_and_see_the_score():
    save_user_rubric("short", SHORT_RUBRIC)

    tokens: list[FeedbackToken] = []

    def hook(message):
        # Identity, not equality: the hook may see one message more than once on its way.
        if isinstance(message, FeedbackToken) and not any(m is message for m in tokens):
            tokens.append(message)

    async def run():
        app = make_app()
        async with app.run_test(size=(100, 32), message_hook=hook) as pilot:
            await wait_model(pilot, app)
            text = await settled_text(pilot, app)
            assert "SmolLM2-135M-Instruct Q8_0" in text and "GPU 0/30" in text and "ctx 1024" in text
            await pick_short_rubric(pilot, app)
            await pilot.click("#instruction")
            await pilot.press(*"What is 2+2?")
            await pilot.press("tab")           # keyboard only from here: tab to the response field
            await pilot.press(*"4")
            assert app.screen.query_one("#response").text == "4"
            activity = record_activity(app)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None and activity[-1:] == ["idle"], 60, "the grade to finish")
            assert activity[0] == "grading" and activity[-1] == "idle"
            view = app.screen.query_one(ResultView)
            text = (await settled_text(pilot, app))
            grade = app.screen.last_grade
            assert grade.score in (1, 2, 3, 4, 5)
            assert grade.probabilities is not None and abs(sum(grade.probabilities) - 1) < 1e-6
            # The score, the five bars with their probabilities, and the speed are on screen.
            assert "of 5" in text
            for s, p in zip(range(1, 6), grade.probabilities):
                assert f" {p:.2f}" in text, (s, p)
            assert "first token" in text and "tok/s" in text
            assert ("forced" in text) == grade.forced
            # The feedback streamed token by token before the result replaced it.
            assert len(tokens) >= 2
            assert view.feedback.strip() in "".join(m.text for m in tokens)
            assert app.activity == "idle"

    asyncio.run(run())


@pytest.mark.slow
def test_escape_cancels_mid_stream_and_the_app_stays_usable():
    save_user_rubric("short", SHORT_RUBRIC)

    async def run():
        app = make_app(engine_options(max_tokens=400))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_model(pilot, app)
            await pick_short_rubric(pilot, app)
            app.screen.query_one("#instruction").load_text("Write a long story about a cat.")
            app.screen.query_one("#response").load_text("Once upon a time there was a cat.")
            await pilot.press("ctrl+r")
            view = app.screen.query_one(ResultView)
            await wait_for(pilot, lambda: len(view.feedback) > 0, 60, "the first feedback token")
            # The footer offers the cancel key now (the screen never settles while tokens stream).
            await wait_for(pilot, lambda: "esc Cancel" in screen_text(app), 10, "the cancel key")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.job is None, 30, "the cancel to land")
            grade = app.screen.last_grade
            assert grade.error == "cancelled" and grade.finish_reason == "cancelled"
            assert grade.completion_tokens < 400
            assert "cancelled" in (await settled_text(pilot, app))
            assert app.activity == "idle"
            # Not frozen, not stuck: the same model grades again at once.
            app.screen.query_one("#instruction").load_text("2+2?")
            app.screen.query_one("#response").load_text("4")
            app.judge.sampling = replace(app.judge.sampling, max_tokens=6)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None, 60, "the second grade")
            assert app.screen.last_grade.score in (1, 2, 3, 4, 5)

    asyncio.run(run())


def test_the_grade_flow_on_a_scripted_model():
    """Keys to result on the scripted engine: the screen shows the score, the five probabilities
    and the feedback it was given, and the model goes grading -> idle."""
    reply = Reply("Right answer, briefly put. [RESULT] 5", (0.01, 0.02, 0.07, 0.2, 0.7))
    tokens: list[FeedbackToken] = []

    def hook(message):
        if isinstance(message, FeedbackToken) and not any(m is message for m in tokens):
            tokens.append(message)

    async def run():
        app = make_fake_app(reply)
        async with app.run_test(size=(100, 32), message_hook=hook) as pilot:
            await wait_model(pilot, app)
            await pilot.click("#instruction")
            await pilot.press(*"What is 2+2?", "tab", "4")
            activity = record_activity(app)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None and activity[-1:] == ["idle"], 10, "the grade")
            assert activity[0] == "grading"
            grade = app.screen.last_grade
            assert (grade.score, grade.probabilities, grade.forced) == (5, reply.scores, False)
            text = await settled_text(pilot, app)
            assert "of 5" in text and all(f" {p:.2f}" in text for p in reply.scores)
            assert "Right answer, briefly put." in text
            assert "".join(m.text for m in tokens) == reply.text
            assert "What is 2+2?" in app.judge.engine.prompts[0]

    asyncio.run(run())


def test_missing_field_is_named_and_focused_not_graded():
    async def run():
        app = make_fake_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_model(pilot, app)
            activity = record_activity(app)
            app.screen.query_one("#instruction").load_text("2+2?")
            app.screen.query_one("#score3_description").load_text("   ")
            await pilot.press("ctrl+r")                 # refused at once, in the key's own handler
            assert app.job is None and activity == []   # nothing started
            assert app.focused.id == "response"         # the first problem: the empty response
            app.screen.query_one("#response").load_text("4")
            await pilot.press("ctrl+r")
            assert app.job is None and activity == []
            assert app.focused.id == "score3_description"
            assert app.judge.engine.prompts == []

    asyncio.run(run())


def test_save_a_rubric_to_the_user_config(user_state):
    async def run():
        app = make_app(load_on_start=False)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            screen.query_one("#criteria").load_text("답변이 간결한가?")
            for s in range(1, 6):
                screen.query_one(f"#score{s}_description").load_text(f"간결함 {s}단계")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, SaveRubricScreen), 5, "the save dialog")
            await pilot.press(*"helpfulness", "enter")   # a preset's name is refused...
            assert "built-in preset" in (await settled_text(pilot, app))
            app.screen.query_one("#rubric-name").value = ""
            await pilot.press(*"concise", "enter")        # ...a new one is saved
            await wait_for(pilot, lambda: app.screen is screen, 5, "the dialog to close")
            saved = load_user_rubrics()
            assert list(saved) == ["concise"]
            assert saved["concise"].criteria == "답변이 간결한가?"
            assert saved["concise"].descriptions[4] == "간결함 5단계"
            assert (user_state / "config" / "rubrics.json").exists()
            assert app.screen.query_one("#rubric-preset").value == "mine:concise"

    asyncio.run(run())


def test_switch_model_from_the_store(tmp_path):
    store = tmp_path / "models"
    (store / "tiny").mkdir(parents=True)
    os.symlink(smollm2_gguf(), store / "tiny" / "tiny.Q4_1.gguf")

    async def run():
        app = make_fake_app(models_dir=store)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_model(pilot, app)
            first = app.judge
            await pilot.press("f4")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen), 5, "the models screen")
            assert "tiny:Q4_1" in (await settled_text(pilot, app))
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.job is None and app.judge is not first, 30, "the new model")
            assert app.model_info.name == "tiny" and app.model_info.quant == "Q4_1"
            assert (await settled_text(pilot, app)).splitlines()[0].lstrip().startswith("tiny Q4_1")
            assert first.engine.model is None          # the old model was closed
            # A file that is not there: said so, and the loaded model stays.
            loaded = app.judge
            await pilot.press("f4")
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen), 5, "the models screen")
            app.screen.query_one("#model-path").focus()
            await pilot.press(*"nope.gguf", "enter")
            await wait_for(pilot, lambda: app.job is None and app.model_error is not None, 10, "the failure")
            assert "no such model file" in app.model_error
            assert app.judge is loaded and app.model_state == "ready"

    asyncio.run(run())


def test_starting_without_a_usable_model_says_why(tmp_path, monkeypatch):
    # Relative paths inside the test's folder: the screen wraps text, and an absolute temporary path
    # (user name, pytest's run counter) would move the line breaks from one machine or run to the next.
    monkeypatch.chdir(tmp_path)

    async def run():
        app = make_app(engine_options(model="missing.gguf", models_dir=Path("empty")))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.model_state == "failed", 10, "the load to fail")
            text = await settled_text(pilot, app)
            assert text.splitlines()[0].startswith(" no model · F4 picks one · missing.gguf: no such model file")
            assert app.model_error == "missing.gguf: no such model file"
            activity = record_activity(app)
            await pilot.press("ctrl+r")                 # nothing to grade with: refused, not crashed
            assert app.job is None and activity == []
            await pilot.press("f4")                     # an empty store says how to fill it
            await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen), 5, "the models screen")
            text = await settled_text(pilot, app)
            assert ("The model store (empty) has no GGUF files yet: get one with `prom-local pull` or "
                    "`prom-local convert`, or type a path below.") in dialog_text(text)
            assert app.focused.id == "model-path"

    asyncio.run(run())


def dialog_text(screen: str) -> str:
    """The words inside a modal dialog's frame (between its █ borders), joined as one paragraph."""
    inside = [line[line.index("█") + 1:line.rindex("█")].strip() for line in screen.splitlines()
              if line.count("█") >= 2]
    return " ".join(part for part in inside if part)


def test_help_lists_every_binding():
    async def run():
        app = make_app(load_on_start=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f1")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "the help screen")
            text = (await settled_text(pilot, app))
            for needle in ("Everywhere", "Grade screen (F2)", "^r", "Grade", "Save rubric", "Esc"):
                assert needle in text, needle
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), 5, "help to close")
            assert "Everywhere" not in (await settled_text(pilot, app))

    asyncio.run(run())
