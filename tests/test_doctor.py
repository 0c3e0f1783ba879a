"""`prom-local doctor` on this machine (CPU build, no GPU) with the real SmolLM2 GGUF: what it reports,
the plans it would choose (also what-if on a GPU), and its verdicts for models that cannot run."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from helpers import RUBRIC, run_cli, write_jsonl
from prom_local.diagnostics.doctor import (EXIT_MEMORY, EXIT_MODEL, diagnose, gguf_tensor_count, install_command,
                               parse_size)

GiB = 1024**3


def vocab_only_copy(src: Path, dst: Path) -> Path:
    """A GGUF with src's metadata and vocabulary but no tensors: what llama.cpp's converter writes with
    --vocab-only. The key/value section is copied byte for byte after a header declaring 0 tensors."""
    data = src.read_bytes()
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(kind: int, pos: int) -> int:
        if kind == 8:  # string
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        if kind == 9:  # array: item type, count, items
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if item in sizes:
                return pos + count * sizes[item]
            for _ in range(count):
                pos = skip_value(item, pos)
            return pos
        return pos + sizes[kind]

    for _ in range(n_kv):
        pos = skip_value(8, pos)                      # the key
        kind = struct.unpack_from("<I", data, pos)[0]
        pos = skip_value(kind, pos + 4)
    dst.write_bytes(data[:8] + struct.pack("<QQ", 0, n_kv) + data[24:pos])
    return dst


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def doctor(*args: str, **env: str):
    """In-process (typer's runner: no interpreter start per call, so the fast lane stays fast)."""
    from typer.testing import CliRunner

    from prom_local.cli import app
    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", **env}).invoke(app, ["doctor", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def doctor_process(*args: str, **env: str):
    """The real command line in a subprocess: exit codes and no traceback, as a user sees them."""
    return run_cli("doctor", *args, env={"COLUMNS": "200", "NO_COLOR": "1", **env})


def test_doctor_reports_this_install_and_the_plan(smollm2):
    proc = doctor("-m", str(smollm2), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    import llama_cpp
    assert report["llama_cpp_version"] == llama_cpp.__version__
    assert report["backend"] == "CPU" and report["gpu_offload"] is False and report["gpus"] == []
    assert report["cpu_cores"] == len(os.sched_getaffinity(0))
    assert report["ram_available_bytes"] > 0 and report["ram_budget_given"] is False
    model = report["model"]
    assert (model["layers"], model["trained_context"], model["quant"]) == (30, 8192, "Q8_0")
    assert model["size_bytes"] == smollm2.stat().st_size and model["tensors"] > 0
    # The context is sized to the built-in judge records (+ --max-tokens 512 + the 16-token reserve).
    ctx = report["context"]
    assert ctx["n_ctx"] % 256 == 0 and ctx["longest_prompt"] + 512 + 16 <= ctx["n_ctx"] < 8192
    plan = report["plan"]
    assert plan["n_gpu_layers"] == 0 and plan["gpu_bytes"] == 0 and "no GPU offload" in plan["offload_reason"]
    assert 1 <= plan["n_parallel"] <= 4 and "(auto, CPU" in plan["parallel_reason"]
    assert plan["ram_bytes"] == model["size_bytes"] + plan["kv_cache_bytes"]
    # This build cannot offload: the exact command that gets one.
    assert report["install_hint"] == install_command(version=llama_cpp.__version__)
    assert '"-DGGML_CUDA=on"' in report["install_hint"] and "llama-cpp-python==" in report["install_hint"]
    assert report["verdict"].startswith("can run: on the CPU") and report["exit_code"] == 0


def test_doctor_screen_says_the_same(smollm2):
    proc = doctor("-m", str(smollm2))
    assert proc.returncode == 0, proc.stderr
    for words in ("CPU build, GPU offload not compiled in", "30 layers", "sized to the work",
                  "--parallel", "CMAKE_ARGS=", "can run"):
        assert words in proc.stderr, words


def test_not_enough_memory_is_a_verdict_not_a_crash(smollm2):
    proc = doctor_process("-m", str(smollm2), "--memory-budget", "64MiB")
    assert proc.returncode == EXIT_MEMORY == 10
    assert "cannot run: not enough memory" in proc.stderr and "64 MiB available" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The same budget from the environment (for scripts), in JSON.
    proc = doctor("-m", str(smollm2), "--json", PROM_LOCAL_MEMORY_BUDGET="64MiB")
    assert proc.returncode == 10 and json.loads(proc.stdout)["exit_code"] == 10


def test_a_gguf_without_weights_is_not_a_model(smollm2, tmp_path):
    vocab = vocab_only_copy(smollm2, tmp_path / "vocab-only.gguf")
    assert gguf_tensor_count(vocab) == 0 and gguf_tensor_count(smollm2) > 0
    proc = doctor_process("-m", str(vocab))
    assert proc.returncode == EXIT_MODEL == 3, proc.stderr
    assert "without model weights (0 tensors" in proc.stderr and "not a model" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content", [b"just some text\n", b"GGUF"])
def test_a_file_that_is_not_a_gguf(tmp_path, content):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    proc = doctor("-m", str(bad), "--json")
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"].startswith("cannot run") and str(bad) in report["verdict"]
    assert "Traceback" not in proc.stderr


def test_a_missing_model_still_reports_the_install(tmp_path):
    proc = doctor("-m", str(tmp_path / "nowhere.gguf"))
    assert proc.returncode == 3
    assert "llama-cpp-python" in proc.stderr and "no such model file" in proc.stderr


def test_what_if_on_a_gpu(smollm2):
    """--gpu-memory plans as a GPU build would: SmolLM2 (94 MiB) fits whole in 8 GiB, partly in 800 MiB."""
    big = diagnose(smollm2, gpu_memory=8 * GiB)
    assert big.plan["n_gpu_layers"] == -1 and big.plan["layers_on_gpu"] == 30
    assert big.plan["ram_bytes"] < smollm2.stat().st_size  # only the token embeddings stay in RAM
    assert any("what-if" in note for note in big.notes) and big.exit_code == 0
    small = diagnose(smollm2, gpu_memory=parse_size("800MiB"), parallel=1)
    assert 0 < small.plan["layers_on_gpu"] < 30 and small.plan["retry_layers"][-1] == 0
    assert small.plan["gpu_bytes"] <= 800 * 2**20 - 768 * 2**20


def test_input_records_size_the_context(smollm2, tmp_path):
    long = {"id": "long", "instruction": "설명해 주세요. " * 300, "response": "네.", "rubric": RUBRIC}
    src = write_jsonl(tmp_path / "in.jsonl", [long])
    builtin = diagnose(smollm2)
    proc = doctor("-m", str(smollm2), "--input", str(src), "--max-tokens", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    ctx = json.loads(proc.stdout)["context"]
    assert ctx["sized_from"] == "the given records" and ctx["max_tokens"] == 64
    assert ctx["longest_prompt"] > builtin.context["longest_prompt"]
    assert ctx["n_ctx"] >= ctx["longest_prompt"] + 64 + 16


def test_input_pairs_size_the_context_too(smollm2, tmp_path):
    pair = {"id": "p", "instruction": "설명해 주세요. " * 300, "response_A": "네.", "response_B": "아니요.",
            "rubric": "정확한가?"}
    src = write_jsonl(tmp_path / "pairs.jsonl", [pair])
    proc = doctor("-m", str(smollm2), "--profile", "prometheus-2", "--input", str(src), "--max-tokens", "64", "--json")
    assert proc.returncode == 0, proc.stderr
    ctx = json.loads(proc.stdout)["context"]
    assert ctx["sized_from"] == "the given records"
    assert ctx["longest_prompt"] > diagnose(smollm2, profile="prometheus-2").context["longest_prompt"]


def test_sizes_and_install_commands():
    assert parse_size("6GiB") == 6 * GiB and parse_size("8G") == 8 * GiB and parse_size("8GB") == 8 * 10**9
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("1000") == 1000 and parse_size("1.5GiB") == 3 * GiB // 2
    for bad in ("lots", "-1GiB", "6 parsecs", ""):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
    assert install_command("Darwin", "0.3.36").startswith('CMAKE_ARGS="-DGGML_METAL=on" pip install')
    assert install_command("Linux", "0.3.36").endswith("llama-cpp-python==0.3.36")


def test_bad_budget_is_a_usage_error(smollm2):
    proc = doctor("-m", str(smollm2), "--memory-budget", "lots")
    assert proc.returncode == 2 and "not a size" in proc.stderr
