"""`prom-local bench`: the built-in records, and real measurements on SmolLM2 (CPU) through Judge."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from helpers import invoke, short_record
from prom_local.diagnostics.bench import BenchRow, bench_records, peak_rss, reset_peak_rss, run_bench
from prom_local.cli.bench_cmd import table

FAST = ["--gpu-layers", "0", "--threads", "1", "--max-tokens", "4"]


def test_builtin_records_are_korean_judge_records_and_copies_differ():
    base = bench_records(8)
    assert len({r.id for r in base}) == 8 and all(r.rubric.criteria and r.reference_answer for r in base)
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in r.instruction) for r in base)  # Hangul
    more = bench_records(19)
    assert len({r.id for r in more}) == 19
    assert len({r.instruction for r in more}) == 19  # no two share a whole prompt
    assert more[8].instruction == "[1] " + base[0].instruction and more[16].id == "bench-1-2"


def test_peak_rss_is_this_process():
    import mmap

    reset_peak_rss()
    before = peak_rss()
    # Fresh anonymous pages, touched: resident. (A bytearray may be served from memory the
    # allocator already holds resident after earlier tests in this worker, adding nothing.)
    block = mmap.mmap(-1, 64 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert peak_rss() >= before + 60 * 2**20
    block.close()


@pytest.mark.slow
def test_bench_command_measures_every_setting_through_the_judge(smollm2, monkeypatch):
    """`bench --json` in this process, at two --parallel settings: what the command parses and
    prints, and what run_bench measures through the Judge. One run serves both (they were two
    tests, one of them a subprocess on a ~1,000-token built-in record: the slowest here)."""
    from prom_local.cli import bench_cmd

    # Short records; the command asks for 2 of them, as it would ask bench_records(2).
    asked = []
    monkeypatch.setattr(bench_cmd, "bench_records", lambda n: asked.append(n) or short_bench_records(n))
    ticks = []

    def counting_run_bench(*args, on_tick, **kwargs):   # the real run_bench; its ticks counted
        return run_bench(*args, on_tick=lambda: (ticks.append(1), on_tick()), **kwargs)

    monkeypatch.setattr(bench_cmd, "run_bench", counting_run_bench)
    result = invoke("bench", "-m", str(smollm2), "--parallel", "1,2", "--records", "2", *FAST, "--json")
    assert result.returncode == 0, result.stderr
    assert asked == [2] and len(ticks) == 2 * 2 * 2  # two passes of two records at two settings
    assert "sized to the work" in result.stderr  # the engine's start-up line: the context it chose, and why
    data = json.loads(result.stdout)
    setup = data["setup"]
    fields = [f.name for f in dataclasses.fields(BenchRow)]
    rows = [BenchRow(**{name: row[name] for name in fields}) for row in data["rows"]]
    # The rates printed are the rows' own (as_dict rounds them).
    assert all(row["records_per_minute"] > 0 and row["prompt_tokens_per_second"] > 0 for row in data["rows"])
    assert setup["records"] == 2 and setup["max_tokens"] == 4 and setup["longest_prompt"] > 200
    assert [r.parallel for r in rows] == [1, 2]
    for row in rows:
        assert row.records == 2 and row.errors == 0 and row.backend == "cpu" and row.gpu_layers == 0
        assert row.n_layer == 30
        # The context was sized to these records (+ 4 new tokens + the reserve), not to the model's 8,192.
        assert row.n_ctx == 512 and setup["longest_prompt"] + 4 + 16 <= 512
        assert 0 < row.generated_tokens <= 2 * 4
        # The first record's whole prompt and the second's own part were computed in the prompt-only
        # pass (nothing cached on a fresh engine).
        assert setup["longest_prompt"] < row.prompt_tokens < 2 * setup["longest_prompt"]
        assert row.prompt_tokens_per_second > 0 and row.records_per_minute > 0
        assert row.run_seconds > 0 and row.prompt_seconds > 0 and row.load_seconds > 0
        assert row.peak_rss_bytes > smollm2.stat().st_size // 2  # the weights are mmapped and read
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table(rows))
    text = console.export_text()
    for column in ("parallel", "prompt tok/s", "gen tok/s", "records/min", "peak RSS"):
        assert column in text


def test_bench_refuses_bad_settings_and_non_models(tmp_path):
    # In-process (no interpreter start per call); `main()` turns PromLocalError into its exit code.
    from typer.testing import CliRunner

    from prom_local.cli import app
    from prom_local.errors import ModelLoadError
    result = CliRunner().invoke(app, ["bench", "--parallel", "1,zero"])
    assert result.exit_code == 2 and "--parallel" in result.output
    bad = tmp_path / "x.gguf"
    bad.write_text("not a model")
    result = CliRunner().invoke(app, ["bench", "-m", str(bad), *FAST])
    # The command group turns the ModelLoadError into one line and its exit code.
    assert result.exit_code == ModelLoadError.exit_code == 3
    assert "not a GGUF file" in result.output and "Traceback" not in result.output


def short_bench_records(n: int):
    """`n` short records in place of the built-in ones (~1,000 SmolLM2 tokens each: too slow for
    a test on 2 cores)."""
    from prom_local.judging.records import record_from_mapping
    return [record_from_mapping(short_record(i), line=i) for i in range(1, n + 1)]


@pytest.mark.slow
def test_bench_table_goes_to_stdout_and_progress_to_stderr(smollm2, monkeypatch):
    # `prom-local bench > bench.txt` must keep the table (it used to print it on stderr). In this
    # process: the command writes both streams through sys.stdout/sys.stderr, which invoke keeps apart.
    from prom_local.cli import bench_cmd
    monkeypatch.setattr(bench_cmd, "bench_records", short_bench_records)
    proc = invoke("bench", "-m", str(smollm2), "--parallel", "1", "--records", "1", *FAST,
                  "--cache-type-k", "q8_0", "--cache-type-v", "q8_0")
    assert proc.returncode == 0, proc.stderr
    assert "records/min" in proc.stdout and "prompt tok/s" in proc.stdout and "KV cache q8_0" in proc.stdout
    assert "records/min" not in proc.stderr
    assert "KV cache q8_0 (given)" in proc.stderr   # the engine's start-up lines stay on stderr
