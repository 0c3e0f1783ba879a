"""The main screens as text at 80x24 and 120x40, compared with tests/snapshots/*.txt.

No model runs here, so nothing varies between machines: the app starts with no model loaded, the
grade result is a fixed Grade handed to the result widget, and the batch screen reviews a results
file checked in beside its input (Korean text, so wide characters must line up). Every snapshot
also checks that each row is exactly the terminal's width.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prom_local.judging.grades import Grade
from prom_local.tui.widgets.batch.results_table import ResultsTable
from prom_local.tui.widgets.grade.result_view import ResultView
from tui_support import assert_fits, check_snapshot, make_app, settled_text, wait_for

DATA = Path(__file__).parent / "data" / "tui"
SIZES = [(80, 24), (120, 40)]

FIXED = Grade(id="tui", score=4, output="", forced=False, finish_reason="stop",
              feedback=("응답은 서울이 대한민국의 수도라는 사실을 정확히 제시하지만, 질문이 요구한 한 문장 형식을 "
                        "지키면서도 근거를 덧붙이지 않아 완전한 답변에는 조금 못 미칩니다."),
              probabilities=(0.01, 0.04, 0.15, 0.62, 0.18), prompt_tokens=231, completion_tokens=58,
              seconds=2.5, extra={"first_token_seconds": 0.5})


@pytest.fixture(autouse=True)
def no_saved_rubrics(tmp_path, monkeypatch):
    monkeypatch.setenv("PROM_LOCAL_CONFIG_DIR", str(tmp_path / "cfg"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_grade_screen(size):
    async def run():
        app = make_app(load_on_start=False)
        async with app.run_test(size=size) as pilot:
            screen = app.screen
            screen.query_one("#instruction").load_text("서울은 어느 나라의 수도인가요? 한 문장으로 답하세요.")
            screen.query_one("#response").load_text("서울은 대한민국의 수도입니다.")
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot(f"grade-empty-{size[0]}x{size[1]}", text)
            screen.query_one(ResultView).show(FIXED)
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot(f"grade-result-{size[0]}x{size[1]}", text)

    asyncio.run(run())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_batch_screen(size, monkeypatch):
    monkeypatch.chdir(DATA)

    async def run():
        app = make_app(load_on_start=False, batch_input=Path("review.jsonl"),
                       batch_output=Path("review.results.jsonl"))
        async with app.run_test(size=size) as pilot:
            table = lambda: app.screen.query_one(ResultsTable)  # noqa: E731
            await wait_for(pilot, lambda: table().row_count == 7, 10, "the file to open")
            await pilot.press("down")
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot(f"batch-detail-{size[0]}x{size[1]}", text)
            await pilot.press("g")
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot(f"batch-agreement-{size[0]}x{size[1]}", text)

    asyncio.run(run())


def test_help_screen():
    async def run():
        app = make_app(load_on_start=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f1")
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot("help-80x24", text)

    asyncio.run(run())


def test_a_missing_snapshot_fails_and_writes_nothing(tmp_path, monkeypatch):
    """Only PROM_LOCAL_UPDATE_SNAPSHOTS=1 writes snapshots: otherwise a test could pass on its own output."""
    import tui_support

    monkeypatch.setattr(tui_support, "SNAPSHOTS", tmp_path)
    monkeypatch.setattr(tui_support, "UPDATE", False)
    with pytest.raises(AssertionError, match="snapshot never-made.txt is missing"):
        check_snapshot("never-made", "some screen")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tui_support, "UPDATE", True)
    check_snapshot("never-made", "some screen")
    assert (tmp_path / "never-made.txt").read_text("utf-8") == "some screen\n"
