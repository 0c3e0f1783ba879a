"""The CLI in this process (typer's runner, through prom_local.cli.main) on a scripted engine:
everything about `score` and `grade` that does not need real numbers -- rows in input order, error
rows for bad lines, resume, --retry-errors, summaries, exit codes, stdin/stdout -- in milliseconds.

The command, its options, model resolution, prompts, tokenizing (a real SmolLM2 vocabulary),
the Judge, grading, the results file and the report are all the real code; only the decoding is
scripted (tests/fake_engine.py), injected where the CLI builds its Judge. What only a real model can
show (probabilities, exactness, kills mid-run) is in test_cli_score.py, test_judge.py and
test_parallel.py, marked slow.
"""

from __future__ import annotations

import json
import re

import pytest

import prom_local.cli.options as cli_options
from fake_engine import FakeEngine, Reply
from helpers import RUBRIC, invoke, read_jsonl, short_record, write_jsonl
from prom_local.judging.judge import Judge


class Scripted:
    """Replies by what the prompt asks: a record whose instruction is "N 더하기 N는?" gets
    score min(N, 5), so each test knows every row's score in advance."""

    def __init__(self, stop: bool = True):
        self.stop = stop

    def __call__(self, prompt: str) -> Reply:
        found = re.search(r"(\d+) 더하기", prompt)
        n = min(int(found.group(1)), 5) if found else 3
        n = max(n, 1)
        scores = [0.02] * 5
        scores[n - 1] = 0.92
        text = f"점수는 {n}점입니다. [RESULT] {n}" if self.stop else "답변을 살펴보면 여러 가지가"
        return Reply(text, tuple(scores), stop=self.stop)


class Built(list):
    """The engines the CLI built, in order; `script` answers their prompts."""

    script = Scripted()


@pytest.fixture
def engines(monkeypatch):
    """Every Judge the CLI builds gets a FakeEngine on the resolved GGUF's vocabulary, with the
    CLI's own profile and sampling. Returns the engines made, so tests can see what was asked."""
    built = Built()
    built.script = Scripted()

    def build(model_path, *, profile, engine, sampling, on_status=None):
        fake = FakeEngine(model_path, lambda prompt: built.script(prompt), n_ctx=engine.n_ctx or 1024)
        built.append(fake)
        return Judge.with_engine(fake, profile=profile, sampling=sampling)

    # The one place the CLI makes a Judge (EngineOptions.judge) calls this name.
    monkeypatch.setattr(cli_options, "Judge", build)
    return built


def score(src, *args, model=None, **kw):
    return invoke("score", str(src), "--model", str(model), "--ctx", "1024", *map(str, args), **kw)


# ----------------------------------------------------------------------------------------------
# score

def test_rows_in_input_order_with_error_rows_and_summary(tmp_path, smollm2, engines):
    src = write_jsonl(tmp_path / "in.jsonl", [
        short_record(1, score=1), "{broken", short_record(2, score=4),
        {"id": "no-response", "instruction": "q", "rubric": {}}, short_record(1)])  # last: duplicate id r1
    out = tmp_path / "out.jsonl"
    result = score(src, "-o", out, "--summary-json", tmp_path / "summary.json", model=smollm2)
    assert result.returncode == 2, result.stderr          # 2: the results file has error rows
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r1", "2", "r2", "no-response", "r1@line5"]
    assert [r["error"] is None for r in rows] == [True, False, True, False, False]
    assert f"{src}:2: invalid JSON" in rows[1]["error"]
    assert f"{src}:4: field 'response'" in rows[3]["error"]
    assert "duplicate id 'r1' (first on line 1)" in rows[4]["error"]
    assert [rows[0]["score"], rows[2]["score"]] == [1, 2]
    assert rows[0]["probabilities"]["1"] == pytest.approx(0.92)
    assert rows[0]["feedback"] == "점수는 1점입니다." and not rows[0]["forced"]
    assert len(engines[0].prompts) == 2                   # only the two good records were decoded
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == 5 and summary["errors"] == 3 and summary["gold"]["n"] == 2
    assert summary["gold"]["exact"] == pytest.approx(0.5)   # r1: 1 vs gold 1; r2: 2 vs gold 4
    assert "wrote 5 rows" in result.stderr and "agreement with gold" in result.stderr
    assert "gold vs predicted" in result.stderr and "Traceback" not in result.stderr


def test_all_scored_exits_0_and_quiet_prints_nothing(tmp_path, smollm2, engines):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(1, 4)])
    result = score(src, "--quiet", model=smollm2)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    rows = read_jsonl(tmp_path / "in.prom.jsonl")          # the default output beside the input
    assert [(r["id"], r["score"]) for r in rows] == [("r1", 1), ("r2", 2), ("r3", 3)]


def test_resume_grades_only_what_is_missing_and_cuts_a_torn_line(tmp_path, smollm2, engines):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(i) for i in range(1, 4)])
    out = tmp_path / "out.jsonl"
    assert score(src, "-o", out, model=smollm2).returncode == 0
    write_jsonl(src, [short_record(i) for i in range(1, 6)])       # two more records...
    with out.open("ab") as handle:
        handle.write(b'{"id": "r9", "score": ')                   # ...and a torn write, as a kill leaves
    result = score(src, "-o", out, model=smollm2)
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_jsonl(out)] == ["r1", "r2", "r3", "r4", "r5"]
    assert "torn last line" in result.stderr and "(3 already there)" in result.stderr
    assert len(engines[1].prompts) == 2                    # the second run decoded r4 and r5 only
    again = score(src, "-o", out, model=smollm2)
    assert again.returncode == 0 and len(read_jsonl(out)) == 5 and engines[2].prompts == []


def test_retry_errors_regrades_fixed_records(tmp_path, smollm2, engines):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1), {"id": "r2", "instruction": "q"}])
    out = tmp_path / "out.jsonl"
    assert score(src, "-o", out, model=smollm2).returncode == 2
    write_jsonl(src, [short_record(1), short_record(2)])          # the user fixes line 2
    same = score(src, "-o", out, model=smollm2)
    assert same.returncode == 2 and read_jsonl(out)[1]["error"]   # plain resume keeps the error row
    fixed = score(src, "-o", out, "--retry-errors", model=smollm2)
    assert fixed.returncode == 0, fixed.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r1", "r2"] and rows[1]["error"] is None and rows[1]["score"] == 2
    assert "removed 1 error rows" in fixed.stderr


def test_stdin_to_stdout(smollm2, engines):
    lines = "".join(json.dumps(short_record(i), ensure_ascii=False) + "\n" for i in (4, 2))
    result = invoke("score", "-", "--model", str(smollm2), "--quiet", input=lines)
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["score"]) for r in map(json.loads, result.stdout.splitlines())] == [("r4", 4), ("r2", 2)]


def test_no_score_written_is_forced_from_the_distribution(tmp_path, smollm2, engines):
    engines.script = Scripted(stop=False)
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(2)])
    result = score(src, "-o", tmp_path / "out.jsonl", "--max-tokens", "4", model=smollm2)
    assert result.returncode == 0, result.stderr
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["forced"] and row["finish_reason"] == "length" and row["score"] == 2
    assert row["completion_tokens"] == 4


def test_over_long_record_is_an_error_row(tmp_path, smollm2, engines):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1, response="아주 긴 응답입니다. " * 200),
                                              short_record(2)])
    result = score(src, "-o", tmp_path / "out.jsonl", model=smollm2)
    assert result.returncode == 2
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert "context size 1024" in rows[0]["error"] and rows[0]["finish_reason"] == "error"
    assert rows[1]["error"] is None and rows[1]["score"] == 2


def test_the_prompt_is_the_profiles(tmp_path, smollm2, engines):
    """What reaches the engine is the record rendered by the model's chat template."""
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(3)])
    assert score(src, "-o", tmp_path / "out.jsonl", model=smollm2).returncode == 0
    (prompt,) = engines[0].prompts
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert "3 더하기 3는?" in prompt and RUBRIC["score5_description"] in prompt


# ----------------------------------------------------------------------------------------------
# grade

def test_grade_streams_feedback_then_prints_the_row(smollm2, engines):
    result = invoke("grade", "--model", str(smollm2), "--json", "-i", "3 더하기 3는?", "-r", "6입니다.",
                    "--rubric-preset", "helpfulness")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[-1])
    assert row["score"] == 3 and result.stdout.startswith(row["output"])
    assert "score 3" in result.stderr and "P(1..5) = 0.02 0.02 0.92 0.02 0.02" in result.stderr


def test_grade_reads_a_record_on_stdin(smollm2, engines):
    piped = invoke("grade", "--model", str(smollm2), "--json", input=json.dumps(short_record(5), ensure_ascii=False))
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout.splitlines()[-1])["id"] == "r5"


@pytest.mark.parametrize("args, stdin, code, message", [
    ([], "{nope", 2, "<stdin>:1: invalid JSON"),
    (["-i", "q", "-r", "a", "--rubric-preset", "nope"], None, 2, "unknown rubric preset 'nope'"),
    (["-i", "q", "-r", "a"], None, 2, "criteria"),
])
def test_grade_bad_input_is_one_line(smollm2, engines, args, stdin, code, message):
    result = invoke("grade", "--model", str(smollm2), *args, input=stdin)
    assert result.returncode == code and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert engines == []                                   # refused before any model was built


# ----------------------------------------------------------------------------------------------
# No engine at all: the model is missing or not a GGUF (real resolution, nothing faked).

def test_missing_model_says_how_to_get_it(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1)])
    result = invoke("score", str(src), "--models-dir", str(tmp_path / "store"), "--model", "prometheus-ko:Q8_0")
    assert result.returncode == 3
    assert "prometheus-ko:Q8_0 is not in the model store" in result.stderr
    assert "prom-local convert nayohan/llama3-8b-it-prometheus-ko" in result.stderr
    result = invoke("score", str(src), "--model", str(tmp_path / "nope.gguf"))
    assert result.returncode == 3 and "nope.gguf: no such model file" in result.stderr
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    result = invoke("score", str(src), "--model", str(not_gguf))
    assert result.returncode == 3 and "not a GGUF file" in result.stderr
    assert not (tmp_path / "in.prom.jsonl").exists()


def test_the_default_store_is_the_isolated_one(tmp_path, user_state):
    """No test sees the model store of whoever runs the suite: the default is conftest's empty one."""
    src = write_jsonl(tmp_path / "in.jsonl", [short_record(1)])
    result = invoke("score", str(src), "--model", "prometheus-ko")
    assert result.returncode == 3 and str(user_state / "models") in result.stderr


def test_info_reads_metadata_without_weights(smollm2):
    result = invoke("info", str(smollm2), "--json")
    data = json.loads(result.stdout)
    assert data["architecture"] == "llama" and data["quant"] == "Q8_0" and data["chat_template"] is True
    assert data["layers"] == 30 and data["context_length"] == 8192 and data["gpu_offload_supported"] is False
