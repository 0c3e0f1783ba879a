"""KV cache types (--cache-type-k / --cache-type-v): the planner's arithmetic per type and `auto`'s
choice, with given memory figures; then a quantized cache on SmolLM2 (CPU): it loads, is planned and
described, scores records, is shared between sequences by the prefix cache, and its state round-trips
through the host prompt store."""

from __future__ import annotations

import numpy as np
import pytest

from assets import smollm2_gguf
from prom_local import EngineConfig, Judge, SamplingParams
from prom_local.engine.context import flash_attn_request
from prom_local.errors import ModelLoadError
from prom_local.engine.offload import F16, MiB, KVTypes, auto_plan, parse_cache_type
from test_host_cache import state_round_trip
from test_offload import LLAMA3_8B_Q4
from test_parallel import SHORT, records, rows_for

GiB = 1024 * MiB
slow = pytest.mark.slow
Q8 = KVTypes("q8_0", "q8_0")


@pytest.mark.parametrize("kv, kib", [(F16, 128), (Q8, 68), (KVTypes("q4_0", "q4_0"), 36),
                                     (KVTypes("q8_0", "f16"), 98)])
def test_kv_bytes_per_token_of_each_type(kv, kib):
    # Llama-3-8B: 32 layers x K and V rows of 1,024 values (8 KV heads of 128). q8_0 stores a block
    # of 32 values in 34 bytes, q4_0 in 18: 2,176 and 1,152 bytes a row against f16's 2,048... per
    # K or V; a mixed pair adds its two rows.
    assert LLAMA3_8B_Q4.kv_bytes_per_token(kv) == kib * 1024
    assert LLAMA3_8B_Q4.kv_bytes_per_layer(2048, kv) == 2048 * kib * 1024 // 32


def test_cache_type_spelling():
    assert parse_cache_type("auto") is None and parse_cache_type(None) is None
    assert parse_cache_type("Q8_0") == "q8_0" and parse_cache_type("f16") == "f16"
    with pytest.raises(ValueError, match="f16, q8_0, q4_0, auto"):
        parse_cache_type("q5_1")
    assert Q8.label == "q8_0" and KVTypes("q8_0", "f16").label == "K q8_0, V f16"


def test_a_quantized_v_turns_flash_attention_on():
    assert flash_attn_request(None) is None                           # f16: llama.cpp's auto
    assert flash_attn_request(False) is False and flash_attn_request(True) is True
    assert flash_attn_request(False, KVTypes("q8_0", "f16")) is False   # a quantized K alone needs nothing
    assert flash_attn_request(None, Q8) is True and flash_attn_request(True, Q8) is True
    with pytest.raises(ModelLoadError, match="needs flash attention"):
        flash_attn_request(False, Q8)


def plan(gpu_gib, **kw):
    return auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=gpu_gib * GiB, ram_free=16 * GiB,
                     cache_k=kw.pop("k", None), cache_v=kw.pop("v", None), **kw)


def test_auto_takes_q8_0_only_where_it_fits_more():
    # 8 GiB: f16 fits 10 sequences of 2,048 tokens, q8_0 18 -> the cap, 16; auto takes q8_0 and says why.
    f16, auto = plan(8, k="f16", v="f16"), plan(8)
    assert (f16.kv, f16.n_parallel) == (F16, 10) and "(given)" in f16.kv_reason
    assert (auto.kv, auto.n_parallel) == (Q8, 16)
    assert "instead of" in auto.kv_reason and "measured small" in auto.kv_reason
    assert auto.kv_bytes == 16 * 2048 * 68 * 1024 and auto.gpu_bytes <= 8 * GiB - 768 * MiB
    # 24 GiB: f16 already reaches the cap with every layer on the GPU: auto keeps f16.
    big = plan(24)
    assert big.kv == F16 and big.n_parallel == 16 and "fit no more" in big.kv_reason
    # Given --parallel and a GPU too small for every layer: q8_0 leaves room for more layers.
    small_f16, small = plan(5, parallel=8, k="f16", v="f16"), plan(5, parallel=8)
    assert small.kv == Q8 and small.offload.layers_on_gpu > small_f16.offload.layers_on_gpu
    # One side given, the other auto: only the auto side may change.
    assert plan(8, k="f16").kv == KVTypes("f16", "q8_0")
    # q4_0 is never auto's choice (its effect on scores was not measured small); it can be asked for.
    assert plan(8, k="q4_0", v="q4_0").kv == KVTypes("q4_0", "q4_0")


def test_auto_on_the_cpu_keeps_f16():
    cpu = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=False, gpu_free=None, ram_free=3 * GiB + 512 * MiB,
                    cache_k=None, cache_v=None)
    assert cpu.kv == F16 and "CPU" in cpu.kv_reason


def test_samples_raise_the_sequences_in_the_one_planner():
    given = plan(8, parallel=1, min_parallel=3)
    assert given.n_parallel == 3 and "samples" in given.parallel_reason


def test_every_model_command_takes_the_cache_types():
    from typer.testing import CliRunner

    from prom_local.cli import app
    for command in ("score", "serve", "grade", "tui", "doctor", "bench"):
        result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, [command, "--help"])
        assert "--cache-type-k" in result.output and "--cache-type-v" in result.output, command


def test_doctor_plans_with_the_cache_types(smollm2):
    import json

    from test_doctor import doctor

    def plan(*args):
        proc = doctor("-m", str(smollm2), "--json", "--parallel", "4", *args)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        return {**report["plan"], "n_ctx": report["context"]["n_ctx"]}

    f16, q8 = plan(), plan("--cache-type-k", "q8_0", "--cache-type-v", "q8_0")
    assert (f16["cache_type_k"], f16["cache_type_v"]) == ("f16", "f16") and "CPU" in f16["kv_reason"]
    # SmolLM2: 30 layers x K and V rows of 192 values.
    assert f16["kv_bytes_per_token"] == 30 * 2 * 192 * 2 and q8["kv_bytes_per_token"] == 30 * 2 * 6 * 34
    assert q8["kv_cache_bytes"] == 4 * q8["n_ctx"] * q8["kv_bytes_per_token"] and q8["kv_reason"].endswith("(given)")
    bad = doctor("-m", str(smollm2), "--cache-type-v", "q5_1")
    assert bad.returncode == 2 and "q5_1" in bad.stdout + bad.stderr


# ----------------------------------------------------------------------------------------------
# On SmolLM2 (CPU): a q8_0 K and V cache, flash attention on.

@slow
def test_a_quantized_cache_loads_plans_scores_and_shares_prefixes():
    lines = []
    engine = EngineConfig(n_ctx=512, gpu_layers=0, n_threads=1, n_parallel=2, cache_type_k="q8_0",
                          cache_type_v="q8_0")
    with Judge(smollm2_gguf(), profile=SHORT, engine=engine, sampling=SamplingParams(max_tokens=6),
               on_status=lines.append) as judge:
        info = judge.engine.describe()
        grades = list(judge.grade_stream(records(rows_for(4))))
    assert (info["cache_type_k"], info["cache_type_v"]) == ("q8_0", "q8_0")
    assert any(line == "KV cache q8_0 (given)" for line in lines), lines
    assert all(g.error is None and g.probabilities is not None for g in grades)
    # q1-a2 and q2-a2 start from their question's prompt, held by the other sequence's copy.
    assert all(g.extra["reused_prompt_tokens"] > 0 for g in grades[2:])


@slow
@pytest.mark.parametrize("k, v", [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")])
def test_a_quantized_state_round_trips_exactly(k, v):
    original, loaded = state_round_trip(smollm2_gguf(), 0, cache_type_k=k, cache_type_v=v)
    assert np.array_equal(original, loaded)


@slow
def test_the_host_store_recalls_a_quantized_cache():
    def grades(host_cache_mib):
        engine = EngineConfig(n_ctx=512, gpu_layers=0, n_threads=1, n_parallel=1, host_cache_mib=host_cache_mib,
                              cache_type_k="q8_0", cache_type_v="q8_0")
        with Judge(smollm2_gguf(), profile=SHORT, engine=engine, sampling=SamplingParams(max_tokens=6)) as judge:
            return list(judge.grade_stream(records(rows_for(4)))), judge.engine.stats

    without, _ = grades(0)
    with_store, stats = grades(64)
    assert stats.recalled_tokens > 0
    # Flash attention (needed by the quantized V) sums in a batch-shape dependent order on the CPU,
    # so logits may move in the last digits; the verdicts do not.
    assert [g.score for g in with_store] == [g.score for g in without]
    assert all(g.error is None for g in with_store)
