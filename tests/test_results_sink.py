"""The results sink: one writer per file (a real OS lock, gone with its process), resume state,
durable appends that leave only complete rows when the file system refuses a write."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prom_local.errors import OutputError, ResultsLocked
from prom_local.judging.grades import Grade
from prom_local.runs.results_sink import ResultsSink, lock_path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def grade(i, **extra) -> Grade:
    return Grade(id=f"r{i}", score=1 + i % 5, feedback="좋다 " * 20, output="… [RESULT] 3",
                 prompt_tokens=100, completion_tokens=10, **extra)


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text("utf-8").splitlines()]


def test_torn_last_line_is_cut_and_its_record_redone(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultsSink(path) as sink:
        sink.write(grade(1))
        sink.write(grade(2))
    with path.open("ab") as handle:
        handle.write(b'{"id": "r3", "sco')          # what a kill -9 mid-write leaves
    with ResultsSink(path) as sink:
        assert sink.done_ids == {"r1", "r2"} and sink.rows == 2
        assert sink.stats.repaired_bytes == len('{"id": "r3", "sco')
        assert path.read_text().endswith("}\n")
        sink.write(grade(3))
        assert sink.stats.graded == 1 and sink.rows == 3
    assert ids(path) == ["r1", "r2", "r3"]


def test_stats_are_counted_by_the_sink(tmp_path):
    with ResultsSink(tmp_path / "out.jsonl") as sink:
        sink.write(grade(1, extra={"reused_prompt_tokens": 40}))
        sink.write(Grade(id="bad", score=None, feedback="", output="", error="x:1: bad", finish_reason="error"))
        sink.write(grade(2, forced=True))
    s = sink.stats
    assert (s.graded, s.errors, s.forced) == (3, 1, 1)
    assert (s.prompt_tokens, s.reused_prompt_tokens, s.completion_tokens) == (160, 40, 20)


def test_a_file_that_is_not_ours_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("hello\n")
    with pytest.raises(OutputError, match="line 1 is not valid JSON"):
        ResultsSink(path).open()
    assert path.read_text() == "hello\n"
    path.write_text('{"score": 3}\n')
    with pytest.raises(OutputError, match="no 'id'"):
        ResultsSink(path).open()
    assert not lock_path(path).exists(), "a refused open lets go of the lock"


def test_retry_errors_drops_error_rows_under_the_lock(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultsSink(path) as sink:
        sink.write(grade(1))
        sink.write(Grade(id="r2", score=None, feedback="", output="", error="bad", finish_reason="error"))
    with ResultsSink(path, retry_errors=True) as sink:
        assert sink.stats.retried == 1 and sink.done_ids == {"r1"}
        with pytest.raises(ResultsLocked):
            ResultsSink(path).open()
    assert ids(path) == ["r1"]


def test_a_directory_is_refused_with_a_file_name_to_use(tmp_path):
    with pytest.raises(OutputError, match="is a directory; give the results a file name") as err:
        ResultsSink(tmp_path).open()
    assert err.value.exit_code == 4


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultsSink(path) as first:
        assert lock_path(path).read_text().strip() == str(os.getpid())
        with pytest.raises(ResultsLocked) as err:
            ResultsSink(path).open()
        assert err.value.exit_code == 9 and err.value.pid == os.getpid()
        assert str(path) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
        first.write(grade(1))
    assert not lock_path(path).exists(), "a finished run removes its lock file"
    with ResultsSink(path) as again:   # and the next run gets the file
        assert again.done_ids == {"r1"}


def test_stdout_needs_no_lock(tmp_path, capsysbinary):
    with ResultsSink("-") as a, ResultsSink("-") as b:
        a.write(grade(1))
        b.write(grade(2))
    assert [json.loads(line)["id"] for line in capsysbinary.readouterr().out.splitlines()] == ["r1", "r2"]


HOLDER = textwrap.dedent("""
    import sys
    from prom_local.runs.results_sink import ResultsSink
    sink = ResultsSink(sys.argv[1]).open()
    print("locked", flush=True)
    sys.stdin.read()   # hold the lock until killed
""")


def test_the_lock_dies_with_a_killed_process(tmp_path):
    path = tmp_path / "out.jsonl"
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "instruction": "q", "response": "r", "criteria": "c",
                               **{f"score{s}_description": str(s) for s in range(1, 6)}}) + "\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ResultsLocked, match=f"pid {holder.pid}"):
            ResultsSink(path).open()
        # The real command, as a user would start it: refused at once, before looking for a model.
        second = subprocess.run([sys.executable, "-m", "prom_local", "score", str(src), "-o", str(path),
                                 "--model", str(tmp_path / "no-model.gguf")],
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 9, second.stderr
        assert second.stderr.strip() == (f"prom-local: error: {path}: another prom-local run (pid {holder.pid}) "
                                         "is writing this results file; wait for it to finish, or write the "
                                         "results to another file")
    finally:
        holder.kill()   # SIGKILL: no chance to clean up
        holder.wait()
    assert lock_path(path).exists(), "kill -9 leaves the lock file behind..."
    with ResultsSink(path) as sink:   # ...but not the lock
        sink.write(grade(1))
    assert ids(path) == ["r1"] and not lock_path(path).exists()


FILL = textwrap.dedent("""
    import resource, signal, sys
    from prom_local.errors import OutputError
    from prom_local.judging.grades import Grade
    from prom_local.runs.results_sink import ResultsSink
    # Past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ ignored): the OS refusing a write, as a
    # full disk's ENOSPC does, without filling a disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    with ResultsSink(sys.argv[1]) as sink:
        try:
            for i in range(100):
                sink.write(Grade(id=f"r{i}", score=3, feedback="피드백 " * 30, output="[RESULT] 3"))
        except OutputError as exc:
            print(exc, flush=True)
            try:
                sink.write(Grade(id="after", score=3, feedback="", output=""))
            except OutputError:
                sys.exit(exc.exit_code)
""")


def test_a_refused_write_leaves_only_complete_rows_and_says_how_many(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResultsSink(path) as sink:   # rows from an earlier run
        sink.write(grade(100))
    row_bytes = path.stat().st_size
    limit = 5000   # some rows fit, and the one that does not is cut mid-line by a short write
    run = subprocess.run([sys.executable, "-c", FILL, str(path), str(limit)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 4, run.stderr
    assert "Traceback" not in run.stderr
    data = path.read_bytes()
    assert len(data) <= limit and data.endswith(b"\n"), "no torn line: cut back to the last complete row"
    rows = data.decode().splitlines()
    assert all(json.loads(line) for line in rows)
    assert 2 < len(rows) and row_bytes < len(data)
    assert run.stdout.strip() == (f"{path}: file too large while writing a row; the file holds {len(rows)} "
                                  f"complete rows ({len(rows) - 1} written by this run). Free some space and "
                                  "re-run the same command: it resumes after them.")
    with ResultsSink(path) as sink:   # and the next run resumes after them
        assert sink.rows == len(rows) and sink.stats.repaired_bytes == 0


def test_a_run_that_writes_nothing_leaves_no_file(tmp_path):
    path = tmp_path / "new" / "out.jsonl"
    with ResultsSink(path) as sink:
        assert sink.done_ids == set()
    assert not path.exists() and not lock_path(path).exists()
    with ResultsSink(path) as sink:
        sink.write(grade(1))
    assert ids(path) == ["r1"]
