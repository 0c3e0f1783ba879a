"""The batch screen driven by Textual's Pilot against the real engine (SmolLM2-135M on CPU, slow)
and the scripted one (tests/fake_engine.py): run a small file, filter the results, stop and resume
into the same file `prom-local score` writes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from prom_local.runs.results_reader import read_rows
from prom_local.reports.absolute import is_disagreement, summarise
from prom_local.runs.results_sink import ResultsSink
from prom_local.tui.widgets.batch.results_table import ResultsTable
from tui_support import (SHORT_RUBRIC, engine_options, make_app, make_fake_app, screen_text, settled_text, wait_for,
                         wait_model)

QUESTIONS = [("2+2?", "4", 5), ("Capital of France?", "Paris", 5), ("3*3?", "6", 1),
             ("Spell cat.", "c-a-t", 4), ("서울은 어느 나라의 수도?", "일본", 1), ("1+1?", "2", 5)]


def write_input(path: Path, n: int, *, bad_line: bool = False) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i, (q, a, gold) in enumerate(QUESTIONS[:n], 1):
            handle.write(json.dumps({"id": f"r{i}", "instruction": q, "response": a,
                                     "rubric": SHORT_RUBRIC.as_dict(), "gold_score": gold},
                                    ensure_ascii=False) + "\n")
        if bad_line:
            handle.write('{"id": "broken", "instruction": "no response field"}\n')
    return path


def table_ids(app) -> list[str]:
    table = app.screen.query_one(ResultsTable)
    return [str(key.value) for key in table.rows]


@pytest.mark.parametrize("real", [pytest.param(True, marks=pytest.mark.slow, id="real"),
                                  pytest.param(False, id="scripted")])
def test_run_a_batch_then_filter(tmp_path, monkeypatch, real):
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path / "in.jsonl", 4, bad_line=True)

    async def run():
        app = (make_app(engine_options(max_tokens=8), batch_input=Path("in.jsonl")) if real
               else make_fake_app(max_tokens=8, batch_input=Path("in.jsonl")))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_model(pilot, app)
            await wait_for(pilot, lambda: len(table_ids(app)) == 5, 10, "the file to open")
            assert "in.jsonl → in.prom.jsonl" in (await settled_text(pilot, app))
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None, 90, "the batch to finish")

            # The same resumable file `prom-local score` writes: one row per input record.
            rows = read_rows(tmp_path / "in.prom.jsonl")
            assert sorted(r["id"] for r in rows) == ["broken", "r1", "r2", "r3", "r4"]
            broken = next(r for r in rows if r["id"] == "broken")
            assert broken["error"] and "response" in broken["error"]
            assert table_ids(app) == ["r1", "r2", "r3", "r4", "broken"]
            # The file holds rows in the order records finished; the table keeps the input's.
            rows = [next(r for r in rows if r["id"] == i) for i in table_ids(app)]
            assert "done: 4 scored, 1 error" in (await settled_text(pilot, app))

            # Filters: errors only, disagreements with gold, one score; `a` shows all again.
            await pilot.press("e")
            assert table_ids(app) == ["broken"]
            await pilot.press("e", "d")
            assert table_ids(app) == [r["id"] for r in rows if is_disagreement(r)]
            await pilot.press("d")
            score = next(r["score"] for r in rows if r["score"] is not None)
            await pilot.press(str(score))
            assert table_ids(app) == [r["id"] for r in rows if r["score"] == score]
            assert f"score {score}" in (await settled_text(pilot, app))
            await pilot.press("a")
            assert len(table_ids(app)) == 5

            # The detail pane follows the cursor; the agreement pane shows the reports' figures.
            await pilot.press("down")
            await wait_for(pilot, lambda: "#r2" in screen_text(app), 5, "the detail of r2")
            await pilot.press("g")
            await wait_for(pilot, lambda: "agreement with gold" in screen_text(app), 5, "the agreement pane")
            summary = summarise(rows)
            text = (await settled_text(pilot, app))
            assert f"agreement with gold (n={summary.gold.n})" in text
            # (its columns widen with a value's sign: compare words, not spacing)
            assert f"exact {summary.gold.exact:.3f}" in " ".join(text.split()), text
            assert "gold ↓  predicted →" in text
            # Each heatmap row: the gold score, its five counts, their total (the left pane shares
            # the terminal line, so look for the run of numbers inside it).
            flat = [" ".join(line.split()) for line in text.splitlines()]
            for gold, counts in zip(range(1, 6), summary.gold.confusion):
                cells = " ".join(map(str, [gold, *counts, sum(counts)]))
                assert any(line.endswith(cells) for line in flat), (cells, text)

    asyncio.run(run())


@pytest.mark.slow  # stopping mid-run needs a model slow enough to be caught mid-run
def test_stop_mid_run_then_resume_into_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "in.prom.jsonl"

    async def run():
        app = make_app(engine_options(max_tokens=24), batch_input=Path("in.jsonl"))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_model(pilot, app)
            await wait_for(pilot, lambda: len(table_ids(app)) == 6, 10, "the file to open")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: out.exists() and len(read_rows(out)) >= 1, 60, "a first row")
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.job is None, 30, "the stop")
            stopped = read_rows(out)
            assert 1 <= len(stopped) < 6
            assert not any(r.get("error") == "cancelled" for r in stopped)   # cut-off records are not written
            assert "^r resumes" in (await settled_text(pilot, app))
            # Another run writing the same file (here: this process holding its sink): refused.
            with ResultsSink(out):
                await pilot.press("ctrl+r")
                await wait_for(pilot, lambda: app.job is None, 30, "the refused run")
                # (notifications are read from the app: toasts are not drawn in a headless test)
                await wait_for(pilot, lambda: any(f"another prom-local run (pid {os.getpid()})" in n.message
                                                  for n in app._notifications), 10, "the refusal")
                assert "failed" in (await settled_text(pilot, app))
            assert read_rows(out) == stopped
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is None, 90, "the resumed run")
            rows = read_rows(out)
            assert sorted(r["id"] for r in rows) == [f"r{i}" for i in range(1, 7)]
            assert [r["id"] for r in rows[:len(stopped)]] == [r["id"] for r in stopped]
            assert "6/6" in (await settled_text(pilot, app))

    asyncio.run(run())


@pytest.mark.slow
def test_the_context_is_sized_to_the_open_file_and_the_header_says_so(tmp_path):
    from prom_local.inputs import valid_records
    from prom_local.cli.tui_cmd import make_loader
    from prom_local.runs.workload import measure
    from prom_local.tui.widgets.model_panel import describe

    src = write_input(tmp_path / "in.jsonl", 3, bad_line=True)   # a bad line is the batch screen's to show
    opts = engine_options(ctx=None)
    need = measure(valid_records(src), opts.model, "prometheus-ko",
                   opts.max_tokens).need_tokens
    judge, info = make_loader(opts, src)(None, lambda message: None)
    with judge:
        assert info.ctx_source == "in.jsonl" and need <= info.n_ctx < 8192
        assert f"ctx {info.n_ctx} for in.jsonl" in describe(info, "ready", None).plain
    judge, info = make_loader(opts)(None, lambda message: None)   # no file: the default context
    with judge:
        assert info.ctx_source == "" and info.n_ctx == 8192
