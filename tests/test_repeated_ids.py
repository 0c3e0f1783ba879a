"""A repeated id means the same in `score` and in `batch submit`: that line's error row, under the id
NAME@lineN, while every other record is graded (runs/score_file.unique_ids is the one rule). Both on
the scripted engine (fake_engine.py): `score` through runs.score_file, `batch submit` through the
Batch API in process with the unmodified openai SDK."""

from __future__ import annotations

from fake_engine import FakeEngine
from helpers import short_record, write_jsonl
from test_serve_batches_app import App, entries, jsonl, wait_status
from prom_local.judging.judge import Judge
from prom_local.backends.batch_client import lines_for_records, rows_from_results
from prom_local.runs.results_reader import read_rows
from prom_local.runs.score_file import score_file

RECORDS = [short_record(1), short_record(2), short_record(1, response="다른 응답"), short_record(3)]
IDS = ["r1", "r2", "r1@line3", "r3"]


def test_score_writes_a_repeated_id_as_that_lines_error_row(smollm2, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "out.jsonl"
    with Judge.with_engine(FakeEngine(smollm2)) as judge:
        stats = score_file(judge, src, out)
    rows = {row["id"]: row for row in read_rows(out)}
    assert sorted(rows) == sorted(IDS) and stats.errors == 1
    assert rows["r1@line3"]["finish_reason"] == "error"
    assert "duplicate id 'r1' (first on line 1)" in rows["r1@line3"]["error"]
    assert all(rows[i]["error"] is None and rows[i]["score"] is not None for i in ("r1", "r2", "r3"))


def test_batch_submit_sends_a_repeated_id_as_that_lines_error_and_gets_its_error_row(smollm2, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    lines = list(lines_for_records(src))    # no longer an InputError that refuses the whole file
    assert [line["custom_id"] for line in lines] == IDS
    assert "duplicate id 'r1' (first on line 1)" in lines[2]["body"]["prom_local_unreadable"]
    with App(smollm2, tmp_path / "data") as app:
        sdk = app.sdk()
        uploaded = sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/grade", completion_window="24h")
        done = wait_status(sdk, batch.id)
        assert done.status == "completed", done
        out, err = entries(sdk, done.output_file_id), entries(sdk, done.error_file_id)
    rows = rows_from_results(jsonl(out), jsonl(err))
    assert [row["id"] for row in rows] == IDS             # the ids `score` writes, in input order
    assert rows[2]["error"] and rows[2]["score"] is None
    assert all(rows[i]["error"] is None and rows[i]["score"] is not None for i in (0, 1, 3))

