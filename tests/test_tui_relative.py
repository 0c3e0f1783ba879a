"""The batch screen reviewing relative (pairwise) results: rows written by hand as the shared
contract lays them out, so no model runs. The table shows the winner where a score goes, the detail
pane P(A)/P(B) and each order's verdict, the agreement pane accuracy, consistency and tie rate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prom_local.tui.widgets.batch.results_table import ResultsTable, cells
from test_report_relative import ROWS, rel_row
from tui_support import assert_fits, check_snapshot, make_app, settled_text, wait_for

RUBRIC = {"criteria": "Which answer is more accurate?",
          **{f"score{s}_description": f"level {s}" for s in range(1, 6)}}


def write_files(tmp_path: Path) -> None:
    """An input of pairwise records (contract 1) and their results (contract 2), plus one
    absolute record and row: a mixed file."""
    records = [{"id": r["id"], "instruction": f"Question {i}?", "response_A": "Answer one.",
                "response_B": "Answer two.", "rubric": RUBRIC, "gold_winner": r["gold_winner"]}
               for i, r in enumerate(ROWS)]
    records.append({"id": "abs1", "instruction": "2+2?", "response": "4", "rubric": RUBRIC, "gold_score": 5})
    rows = ROWS + [{"id": "abs1", "score": 5, "feedback": "Right.", "output": "Right. [RESULT] 5",
                    "forced": False, "gold_score": 5, "error": None}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    (tmp_path / "pairs.prom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def test_table_cells_for_relative_rows():
    texts = lambda row: [c.plain for c in cells(row)]  # noqa: E731
    assert texts(ROWS[0])[:3] == ["p0", "A", "A"]
    assert texts(ROWS[3])[:3] == ["p3", "tie", "A"]            # orders disagreed
    assert "red" in str(cells(ROWS[2])[1].style)               # A where gold says B
    assert texts(ROWS[7])[3] == "forced"
    assert texts(ROWS[9])[1] == "-" and "prompt too long" in texts(ROWS[9])[4]
    assert texts(rel_row(20, "B", None))[1:3] == ["B", "-"]


def test_review_relative_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path)

    async def run():
        app = make_app(load_on_start=False, batch_input=Path("pairs.jsonl"))
        async with app.run_test(size=(100, 50)) as pilot:
            table = lambda: app.screen.query_one(ResultsTable)  # noqa: E731
            await wait_for(pilot, lambda: table().row_count == 11, 10, "the file to open")
            text = await settled_text(pilot, app)
            assert_fits(app)
            assert "#p0  winner A  gold A" in text
            assert "P(A)=0.90  P(B)=0.10" in text and "consistent  AB: A  BA: A" in text
            for _ in range(3):
                await pilot.press("down")
            await wait_for(pilot, lambda: "#p3" in app.screen.query_one("#detail-header").render().plain,
                           5, "the detail of p3")
            text = await settled_text(pilot, app)
            assert "#p3  winner tie  gold A" in text and "inconsistent (a tie)  AB: A  BA: B" in text

            await pilot.press("d")                              # disagreeing with gold only
            await wait_for(pilot, lambda: table().row_count == 2, 5, "the filter")
            assert [str(k.value) for k in table().rows] == ["p2", "p3"]
            await pilot.press("a", "g")                         # all rows, agreement pane
            text = await settled_text(pilot, app)
            assert_fits(app)
            assert "relative rows 10 · forced 1 · errors 1" in text and "A 5 · B 3 · tie 1 · none 1" in text
            assert text.index("relative rows") < text.index("agreement with gold (n=1)")   # main kind first
            assert "accuracy    75.0%  n=8 · ties 1" in text and "tie rate    25.0%" in text

    asyncio.run(run())


def test_relative_agreement_pane_snapshot(tmp_path, monkeypatch):
    """The agreement pane of an all-pairwise file at 80x24 (the side pane is narrowest there)."""
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path)
    (tmp_path / "pairs.prom.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    lines = (tmp_path / "pairs.jsonl").read_text("utf-8").splitlines()
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines[:-1]) + "\n", "utf-8")   # pairs only

    async def run():
        app = make_app(load_on_start=False, batch_input=Path("pairs.jsonl"))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.screen.query_one(ResultsTable).row_count == 10, 10, "the file to open")
            await pilot.press("g")
            text = await settled_text(pilot, app)
            assert_fits(app)
            check_snapshot("batch-relative-agreement-80x24", text)

    asyncio.run(run())
