"""Every failure a user can cause ends in one clear line and a documented exit code (docs/formats.md,
"Exit codes"), never a traceback: bad arguments and bad paths for every command, a second writer of a
results file, a file system that refuses a write mid-run."""

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prom_local.cli import app

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
RUBRIC = {"criteria": "맞는가?", **{f"score{s}_description": f"{s}점" for s in range(1, 6)}}


def record(i: int, **extra) -> dict:
    return {"id": f"r{i}", "instruction": f"{i} 더하기 {i}는?", "response": f"{2 * i}입니다.",
            "rubric": RUBRIC, **extra}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), "utf-8")
    return path


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """Paths the cases below name: good inputs, and each kind of bad one."""
    write_jsonl(tmp_path / "in.jsonl", [record(1), record(2)])
    write_jsonl(tmp_path / "gold.jsonl", [{"id": "a", "score": 3, "gold_score": 3},
                                          {"id": "b", "score": 4, "gold_score": 5}])
    write_jsonl(tmp_path / "other.jsonl", [{"id": "zzz", "score": 3}])
    (tmp_path / "notjson.jsonl").write_text("hello\n")
    (tmp_path / "torn.json").write_text('[{"idx": 1, "instruction": "###Task')   # a benchmark file, cut
    write_jsonl(tmp_path / "pairs.jsonl", [{"id": "a", "mode": "relative", "winner": "A", "gold_winner": "B"}])
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty-checkpoint").mkdir()
    return {name: str(tmp_path / name) for name in
            ("in.jsonl", "gold.jsonl", "other.jsonl", "notjson.jsonl", "fake.gguf", "a-file", "adir",
             "empty-checkpoint", "torn.json", "pairs.jsonl")} | {"missing": str(tmp_path / "missing.jsonl"),
                                     "out": str(tmp_path / "out.jsonl"),
                                     "store": str(tmp_path / "store"),
                                     "dead": _dead_url()}


def _dead_url() -> str:
    """A loopback URL where nothing listens (a port the OS just gave out and took back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# (argv with {placeholders} from `files`, exit code, what the message says). Exit codes: 1 other
# errors, 2 bad argument or input, 3 model, 4 output/results file, 5 conversion, 9 results locked.
CASES = {
    "score": [
        (["score", "{missing}", "-o", "{out}", "-m", "{fake.gguf}"], 2, "missing.jsonl: no such file"),
        (["score", "{adir}", "-o", "{out}", "-m", "{fake.gguf}"], 2, "is a directory, expected a JSONL file"),
        (["score", "{torn.json}", "-o", "{out}", "-m", "{fake.gguf}"], 2, "torn.json: invalid JSON"),
        (["score", "{in.jsonl}", "-o", "{adir}", "-m", "{fake.gguf}"], 4, "is a directory; give the results a file name"),
        (["score", "{in.jsonl}", "-o", "{a-file}/out.jsonl", "-m", "{fake.gguf}"], 4, "a folder on its path is a file"),
        (["score", "{in.jsonl}", "-o", "{notjson.jsonl}", "-m", "{fake.gguf}"], 4, "not a prom-local output file"),
        (["score", "{in.jsonl}", "-o", "{out}", "-m", "{missing}.gguf"], 3, "no such model file"),
        (["score", "{in.jsonl}", "-o", "{out}", "-m", "{fake.gguf}"], 3, "not a GGUF file"),
        (["score", "{in.jsonl}", "-o", "-", "-m", "{fake.gguf}"], 3, "not a GGUF file"),
        (["score", "{in.jsonl}", "-o", "{out}", "-m", "{fake.gguf}", "--profile", "nope"], 2,
         "unknown prompt profile 'nope' (known: prometheus-2, prometheus-ko"),
        (["score", "{in.jsonl}", "-o", "{out}", "--gpu-layers", "lots"], 2, "--gpu-layers"),
        (["score", "{in.jsonl}", "--actors", "2"], 2, "--actors needs --ray"),
        (["score", "{in.jsonl}", "--parallel", "0"], 2, "--parallel"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "ftp://box"], 2, "expected http://HOST:PORT"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "http://box:port"], 2, "not a URL"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "{dead}"], 11, "connection refused"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "{dead}", "--ctx", "512"], 2,
         "--ctx is an option of a local model"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "{dead}", "--ray", "local"], 2, "--ray and --server"),
        (["score", "{in.jsonl}", "-o", "{out}", "--api-key-file", "{in.jsonl}"], 2, "--api-key-file needs --server"),
        (["score", "{in.jsonl}", "-o", "{out}", "--server", "{dead}", "--api-key-file", "{missing}"], 2,
         "--api-key-file"),
        (["score", "{in.jsonl}", "--samples", "0"], 2, "--samples"),
        (["score", "{in.jsonl}", "-o", "{out}", "--protocol", "nope"], 2, "unknown protocol 'nope' (known: paper)"),
    ],
    "grade": [
        (["grade", "-i", "q", "-r", "r", "--rubric-preset", "nope"], 2, "unknown rubric preset 'nope'"),
        (["grade", "-i", "q", "-r", "r", "--rubric-preset", "helpfulness", "-m", "{fake.gguf}"], 3, "not a GGUF file"),
        (["grade", "-i", "q", "-r", "r"], 2, "field 'criteria': missing or empty"),
        (["grade"], 2, "<stdin>:1: invalid JSON"),   # stdin is not a terminal here, and empty
        (["grade", "-i", "q", "-r", "r", "--rubric-preset", "helpfulness", "--server", "{dead}"], 11,
         "connection refused"),
        (["grade", "-i", "q", "-r", "r", "--server", "{dead}", "--gpu-layers", "0"], 2,
         "--gpu-layers is an option of a local model"),
        (["grade", "-i", "q", "-r", "r", "--rubric-preset", "helpfulness", "--protocol", "nope"], 2,
         "unknown protocol 'nope'"),
    ],
    "serve": [   # a model that fails to load is told after the port opens: tests/test_serve.py
        (["serve", "--api-key-file", "{missing}"], 2, "--api-key-file"),
        (["serve", "--api-key", "k", "--api-key-file", "{in.jsonl}"], 2, "not both"),
        (["serve", "--port", "-5"], 2, "--port"),
        (["serve", "--api-key", ""], 2, "--api-key is empty"),
        (["serve", "--host", "0.0.0.0"], 2, "--insecure-no-auth"),
        (["serve", "--ssl-certfile", "{in.jsonl}"], 2, "go together"),
    ],
    "tui": [
        (["tui", "--gpu-layers", "lots"], 2, "--gpu-layers"),
        (["tui", "--parallel", "0"], 2, "--parallel"),
        (["tui", "--server", "localhost:8000"], 2, "expected http://HOST:PORT"),
        (["tui", "--server", "{dead}", "--threads", "2"], 2, "--threads is an option of a local model"),
    ],
    "render": [
        (["render", "{in.jsonl}", "--profile", "nope"], 2, "unknown prompt profile 'nope'"),
        (["render", "{missing}"], 2, "missing.jsonl: no such file"),
        (["render", "{adir}"], 2, "is a directory"),
        (["render", "{in.jsonl}", "-m", "{fake.gguf}"], 3, "not a GGUF file"),
    ],
    "report": [
        (["report", "{missing}"], 4, "missing.jsonl: no such file"),
        (["report", "{adir}"], 4, "is a directory, expected a results JSONL file"),
        (["report", "{notjson.jsonl}"], 4, "notjson.jsonl:1: not valid JSON"),
        (["report", "{gold.jsonl}", "--png", "{a-file}/heatmap.png"], 4, "cannot write the PNG"),
    ],
    "compare": [
        (["compare", "{missing}", "{gold.jsonl}"], 4, "missing.jsonl: no such file"),
        (["compare", "{gold.jsonl}", "{other.jsonl}"], 1, "share no record ids"),
        (["compare", "{gold.jsonl}"], 2, "Missing argument"),
        (["compare", "{pairs.jsonl}", "{gold.jsonl}"], 1, "compare runs of the same kind"),
    ],
    "convert": [
        (["convert", "{empty-checkpoint}", "--models-dir", "{store}"], 5, "no config.json"),
        (["convert", "{empty-checkpoint}", "--quant", "Q9_Z", "--models-dir", "{store}"], 5, "not a llama.cpp quantization type"),
    ],
    "pull": [
        (["pull", "nope:Q4_K_M", "--models-dir", "{store}"], 1, "not a registry model"),
        (["pull", "kudge", "--quant", "Q8_0"], 2, "pull kudge takes FILES"),
        (["pull", "kudge", "nope"], 2, "no KUDGE file 'nope'"),
    ],
    "models": [
        (["models", "--models-dir", "{a-file}"], 1, "Not a directory"),
    ],
    "doctor": [   # a model doctor cannot use is its verdict, not an error: tests/test_doctor.py
        (["doctor", "--memory-budget", "lots"], 2, "--memory-budget"),
        (["doctor", "--gpu-layers", "lots"], 2, "--gpu-layers"),
    ],
    "bench": [
        (["bench", "-m", "{fake.gguf}"], 3, "not a GGUF file"),
        (["bench", "--parallel", "1,zero"], 2, "--parallel"),
    ],
    "info": [
        (["info", "{fake.gguf}"], 3, "not a GGUF file"),
        (["info", "{missing}.gguf"], 3, "no such model file"),
    ],
}


def fill(argv: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for name, path in files.items():
            arg = arg.replace("{" + name + "}", path)
        out.append(arg)
    return out


def test_every_command_fails_in_one_line_with_its_exit_code(files):
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert commands - CASES.keys() == set(), "add bad-argument cases for the new command(s) to CASES"
    runner = CliRunner()
    for command, cases in CASES.items():
        for argv, code, says in cases:
            args = fill(argv, files)
            result = runner.invoke(app, args, input="")
            where = f"prom-local {' '.join(args)}"
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise AssertionError(f"{where}: raised {result.exception!r}") from result.exception
            assert "Traceback" not in result.output, where
            assert says in result.output, f"{where}: {result.output}"
            assert result.exit_code == code, f"{where}: exit {result.exit_code}\n{result.output}"
            if result.exit_code != 2 or "prom-local: error:" in result.stderr:
                lines = [line for line in result.stderr.splitlines() if line.startswith("prom-local: error:")]
                assert len(lines) == 1, f"{where}: {result.stderr}"


def test_the_real_process_ends_in_one_line_too(files):
    """The installed entry point (main) as well as the in-process runner."""
    for argv, code, says in (CASES["score"][2], CASES["render"][0]):
        run = subprocess.run([sys.executable, "-m", "prom_local", *fill(argv, files)], env=ENV,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == code and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().startswith("prom-local: error:") and says in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def _without_root_file_access():
    """Root reads and writes anything; drop the two capabilities that allow it (from the bounding set,
    which limits what the exec'd process gets), so permission bits apply as for any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def test_unreadable_input_and_unwritable_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [record(1)])
    secret = write_jsonl(tmp_path / "secret.jsonl", [record(1)])
    secret.chmod(0)
    locked_dir = tmp_path / "read-only"
    locked_dir.mkdir()
    locked_dir.chmod(0o555)
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf")
    as_user = _without_root_file_access if os.geteuid() == 0 else None
    probe = subprocess.run([sys.executable, "-c", f"open({str(secret)!r})"], preexec_fn=as_user,
                           capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this user reads a mode-000 file (root without CAP_SETPCAP to drop its access)")
    for argv, code, says in (
        (["score", str(secret), "-o", str(tmp_path / "x.jsonl"), "-m", str(fake)], 2,
         f"{secret}: cannot read it: Permission denied"),
        (["score", str(src), "-o", str(locked_dir / "out.jsonl"), "-m", str(fake)], 4,
         f"{locked_dir / 'out.jsonl.lock'}: cannot create the lock file beside the results: Permission denied"),
        (["report", str(secret)], 4, f"{secret}: cannot read it: Permission denied"),
    ):
        run = subprocess.run([sys.executable, "-m", "prom_local", *argv], env=ENV, capture_output=True,
                             text=True, timeout=120, preexec_fn=as_user)
        assert run.returncode == code, run.stderr
        assert run.stderr.strip() == f"prom-local: error: {says}"


def _file_size_limit(limit: int):
    def apply():
        # Past RLIMIT_FSIZE a write fails with EFBIG (SIGXFSZ ignored, as it stays across exec): the
        # OS refusing a write mid-run, as a full disk does, without filling one.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_file_system_mid_run_keeps_complete_rows_and_resumes(tmp_path, smollm2):
    src = write_jsonl(tmp_path / "in.jsonl", [record(i) for i in range(3)])
    out = tmp_path / "out.jsonl"
    argv = [sys.executable, "-m", "prom_local", "score", str(src), "-o", str(out), "--model", str(smollm2),
            "--max-tokens", "6", "--ctx", "1024", "--gpu-layers", "0", "--quiet"]
    # A row here is about 500 bytes: the limit falls inside the second one.
    full = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=_file_size_limit(800))
    assert full.returncode == 4, full.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n") or not data, "cut back to the last complete row: no torn line"
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert len(rows) < 3
    assert full.stderr.strip() == (f"prom-local: error: {out}: file too large while writing a row; the file "
                                   f"holds {len(rows)} complete rows ({len(rows)} written by this run). Free "
                                   "some space and re-run the same command: it resumes after them.")
    again = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"r{i}" for i in range(3)]


def test_a_second_writer_is_refused_before_any_model_or_cluster_starts(files):
    from prom_local.runs.results_sink import ResultsSink

    runner = CliRunner()
    with ResultsSink(files["out"]) as first:
        for extra in ([], ["--ray", "local"]):   # the local path and the Ray driver: the same sink
            result = runner.invoke(app, ["score", files["in.jsonl"], "-o", files["out"], "-m", files["fake.gguf"],
                                         *extra])
            assert result.exit_code == 9, result.output
            assert result.stderr.strip() == (
                f"prom-local: error: {files['out']}: another prom-local run (pid {os.getpid()}) is writing this "
                "results file; wait for it to finish, or write the results to another file")
        assert first.rows == 0
    assert not Path(files["out"]).exists()


def test_every_error_class_takes_its_code_from_the_one_table():
    """Each PromLocalError subclass, wherever it is defined, names a member of errors.ExitCode, and
    docs/formats.md lists every code in its exit code table."""
    import importlib
    import pkgutil

    import prom_local
    from prom_local.errors import ExitCode, PromLocalError

    for info in pkgutil.walk_packages(prom_local.__path__, "prom_local."):
        if not info.name.endswith("__main__"):   # it runs the CLI
            importlib.import_module(info.name)   # every other module, so every error class is defined

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    loose = [c.__qualname__ for c in subclasses(PromLocalError) if not isinstance(c.exit_code, ExitCode)]
    assert not loose, f"exit codes not from errors.ExitCode: {loose}"
    page = (ROOT / "docs" / "formats.md").read_text("utf-8")
    section = page.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]   # up to the next section
    missing = [code.value for code in ExitCode if code and f"| {code.value} " not in section]
    assert not missing, f"docs/formats.md's exit code table lacks {missing}"
