"""A results file gets each row the moment its record is done (issue 18): a slow first record holds
back no other row, a kill -9 loses only what was in flight, and resuming then grades exactly the
missing records. Stdout keeps input order. On the scripted engine (tests/fake_engine.py), with a
first record that finishes last (tests/slow_first.py)."""

import subprocess
import sys

import pytest
from fake_engine import FakeEngine, Reply
from helpers import ROOT, TESTS, cli_env, read_jsonl, short_record, write_jsonl
from slow_first import SlowFirst

from prom_local.judging.judge import Judge
from prom_local.judging.backend import in_input_order
from prom_local.runs.score_file import score_file

REPLY = Reply("Right. [RESULT] 4")


def test_in_input_order_releases_each_row_once_those_before_it_are_out():
    seen = []
    for row in in_input_order([(2, "c"), (0, "a"), (3, "d"), (1, "b")]):
        seen.append(row)
    assert seen == ["a", "b", "c", "d"]


def test_in_input_order_yields_the_finished_rows_before_an_error():
    def finished():
        yield 1, "b"
        yield 2, "c"
        raise RuntimeError("server gone")

    rows = in_input_order(finished())
    assert [next(rows), next(rows)] == ["b", "c"]   # row 0 never came: what finished still counts
    with pytest.raises(RuntimeError):
        next(rows)


def test_later_rows_are_in_the_file_before_the_slow_first_record_ends(smollm2, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(4)] + ['{"broken'])
    out = tmp_path / "out.jsonl"
    in_file_when_first_ran = []

    def before_first():
        in_file_when_first_ran.extend(row["id"] for row in read_jsonl(out))

    with Judge.with_engine(SlowFirst(smollm2, REPLY, before_first=before_first)) as judge:
        stats = score_file(judge, src, out)
    assert stats.graded == 5
    # Written (and fsynced: ResultsSink.write) while record r0 was still in flight.
    assert sorted(in_file_when_first_ran) == ["5", "r1", "r2", "r3"]
    assert [row["id"] for row in read_jsonl(out)][-1] == "r0"


def test_stdout_keeps_input_order(smollm2, tmp_path, capsysbinary):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(3)])
    with Judge.with_engine(SlowFirst(smollm2, REPLY, before_first=lambda: None)) as judge:
        score_file(judge, src, "-")
    ids = [line.split(b'"id": "')[1].split(b'"')[0] for line in capsysbinary.readouterr().out.splitlines()]
    assert ids == [b"r0", b"r1", b"r2"]


def test_kill_9_with_the_first_record_in_flight_then_resume_loses_none_and_repeats_none(smollm2, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(5)])
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, str(TESTS / "slow_first.py"), str(smollm2), str(src), str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=cli_env(PYTHONPATH=f"{ROOT}:{TESTS}"))
    try:
        assert proc.stdout.readline().strip() == "rest written"
        proc.kill()   # SIGKILL, with r0 in flight
    finally:
        proc.wait(timeout=60)
    assert sorted(row["id"] for row in read_jsonl(out)) == ["r1", "r2", "r3", "r4"]

    with Judge.with_engine(FakeEngine(smollm2, REPLY)) as judge:
        stats = score_file(judge, src, out)
    assert (stats.skipped, stats.graded) == (4, 1)
    ids = [row["id"] for row in read_jsonl(out)]
    assert sorted(ids) == ["r0", "r1", "r2", "r3", "r4"] and len(ids) == len(set(ids))


def test_the_local_judge_the_remote_judge_and_the_ray_engines_are_each_a_backend():
    from prom_local.backends.ray.driver import RayScorer
    from prom_local.backends.remote import RemoteJudge
    from prom_local.judging.backend import Backend, RowStream

    assert all(issubclass(cls, Backend) and issubclass(cls, RowStream) for cls in (Judge, RemoteJudge, RayScorer))
