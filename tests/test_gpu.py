"""The CUDA (or Metal) path. Tests marked `gpu` are always collected and skip unless this llama.cpp
build can offload and sees a GPU; `benchmarks/gpu_check.sh` runs them (`pytest -m gpu`) on a CUDA
machine, with models it makes there (PROM_LOCAL_GPU_MODELS) or the tiny Llama 3 fixture.

The arithmetic behind `--gpu-layers auto` and the retry after an out-of-memory load is tested here
on any machine, without a GPU, with given memory figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import short_record
from prom_local.engine.offload import MiB, ModelShape, auto_plan, plan_offload, retry_layers

GiB = 1024 * MiB
LLAMA3_8B_Q4 = ModelShape(file_bytes=4_920_000_000, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
                          n_ff=14336, n_vocab=128256)
# Score probabilities (renormalised over 1..5) may differ between CPU and GPU by this much: CUDA's
# kernels (MMQ/cuBLAS, f16 accumulation, flash attention) add in other orders than the CPU's.
PROB_TOL = 0.02


def _gpu_seen() -> bool:
    try:
        from prom_local.engine.devices import backend_devices
        from prom_local.engine import gpu_offload_supported
        return gpu_offload_supported() and any(d.is_gpu for d in backend_devices())
    except Exception:  # no llama.cpp at all: the other tests say so
        return False


GPU = _gpu_seen()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not GPU, reason="no GPU: this llama.cpp build cannot offload or sees no GPU "
                               "(benchmarks/gpu_check.sh runs these on a CUDA machine)")


# ----------------------------------------------------------------------------------------------
# The arithmetic, on any machine.

def test_auto_puts_every_layer_on_a_large_gpu_arithmetic():
    plan = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=80 * GiB, ram_free=16 * GiB)
    assert plan.offload.n_gpu_layers == -1 and plan.offload.layers_on_gpu == 32
    assert plan.n_parallel == 16
    # The RAM side then holds only the token embeddings (llama.cpp keeps them on the CPU).
    assert plan.host_bytes < LLAMA3_8B_Q4.file_bytes * 0.1


def test_auto_puts_fewer_layers_under_a_capped_budget_arithmetic():
    layers = [plan_offload(LLAMA3_8B_Q4, n_ctx=2048, free_bytes=gib * GiB, gpu_supported=True).layers_on_gpu
              for gib in (1, 2, 3, 4, 5)]
    assert 0 < layers[0] < layers[1] < layers[2] < layers[3] < 32   # more memory, more layers
    assert layers[4] == 32
    # Auto --parallel on a capped GPU: one sequence, and the layers that fit beside its cache.
    capped = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=3 * GiB, ram_free=16 * GiB)
    assert capped.n_parallel == 1 and capped.offload.layers_on_gpu == layers[2]
    assert capped.gpu_bytes <= 3 * GiB


def test_retry_after_an_out_of_memory_load_steps_down_to_the_cpu_arithmetic():
    tries = retry_layers(-1, 32)
    assert tries[0] == 24 and tries[-1] == 0
    assert all(a > b for a, b in zip(tries, tries[1:]))  # always fewer, never stuck
    assert retry_layers(2, 2) == [1, 0]


# ----------------------------------------------------------------------------------------------
# On a GPU.

@pytest.fixture(scope="module")
def gpu_model(request) -> Path:
    """A Llama 3 GGUF for the GPU tests: gpu_check.sh's (made on that machine), else the fixture's."""
    folder = os.environ.get("PROM_LOCAL_GPU_MODELS")
    if folder:
        return Path(folder) / "tiny-llama3" / "tiny-llama3.Q8_0.gguf"
    store, name = request.getfixturevalue("tiny_llama3_store")
    return store / name / f"{name}.Q8_0.gguf"


def _records(n: int = 4):
    from prom_local.judging.records import record_from_mapping
    return [record_from_mapping(short_record(i), line=i) for i in range(1, n + 1)]


def _forced(model: Path, gpu_layers: int, parallel: int = 4, **engine) -> list:
    """Grades with max_tokens 0: every score is read from the model's own distribution after the
    forced "[RESULT]" on the same tokens, so CPU and GPU are compared on identical inputs (greedy
    text could part ways on a near-tie and then compare different things)."""
    from prom_local.engine import EngineConfig, SamplingParams
    from prom_local.judging.judge import Judge

    config = EngineConfig(n_ctx=1024, gpu_layers=gpu_layers, n_parallel=parallel, **engine)
    with Judge(model, engine=config, sampling=SamplingParams(max_tokens=0)) as judge:
        assert judge.engine.plan.n_gpu_layers == gpu_layers
        return list(judge.grade_stream(_records()))


@gpu
@needs_gpu
def test_full_and_partial_offload_give_the_cpu_scores(gpu_model):
    cpu = _forced(gpu_model, 0)
    for layers in (-1, 1):  # every layer (and the output head), then one of the two layers
        on_gpu = _forced(gpu_model, layers)
        for c, g in zip(cpu, on_gpu):
            assert g.error is None and g.forced
            assert g.probabilities == pytest.approx(c.probabilities, abs=PROB_TOL), (layers, c.id)
            top = sorted(c.probabilities, reverse=True)
            if top[0] - top[1] > 2 * PROB_TOL:  # a near-tie may legitimately flip
                assert g.score == c.score, (layers, c.id)


@gpu
@needs_gpu
def test_auto_puts_every_layer_of_a_small_model_on_the_gpu(gpu_model):
    from prom_local.engine import Engine, EngineConfig

    said = []
    with Engine(gpu_model, EngineConfig(gpu_layers=None, n_parallel=2, need_tokens=600),
                on_status=said.append) as engine:
        assert engine.plan.n_gpu_layers == -1 and engine.plan.layers_on_gpu == engine.model.n_layer
        assert engine.n_ctx == 768  # 600 + the 16-token reserve, rounded up to 256
    assert any("fit on the GPU" in line for line in said), said


@gpu
@needs_gpu
def test_auto_puts_fewer_layers_under_a_capped_gpu_budget(gpu_model, monkeypatch):
    import prom_local.engine.loading as loading
    from prom_local.engine import Engine, EngineConfig, load_vocab_only
    from prom_local.engine.offload import DEFAULT_RESERVE_BYTES

    probe = load_vocab_only(gpu_model)
    shape = probe.shape()
    probe.close()
    per_layer = shape.layer_bytes + shape.kv_bytes_per_layer(512)
    # Room for one layer and a half: auto must put one layer there, not all of them.
    # (engine/loading.py asks devices.free_gpu_memory, the one nvidia-smi reader, under that name)
    monkeypatch.setattr(loading, "free_gpu_memory", lambda: DEFAULT_RESERVE_BYTES + per_layer * 3 // 2)
    with Engine(gpu_model, EngineConfig(gpu_layers=None, n_parallel=1, n_ctx=512)) as engine:
        assert engine.plan.n_gpu_layers == 1 and engine.plan.layers_on_gpu == 1
        assert "1 of 2 layers fit" in engine.plan.reason


@gpu
@needs_gpu
def test_a_load_that_cannot_fit_is_retried_with_fewer_layers(gpu_model):
    """A real out-of-memory load: torch takes the GPU's memory but for less than the model's output
    head, so `--gpu-layers all` cannot load and the engine must step down (and say so)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs torch with CUDA to take GPU memory away")
    from prom_local.engine import Engine, EngineConfig, load_vocab_only

    probe = load_vocab_only(gpu_model)
    head = probe.shape().output_bytes
    probe.close()
    free, _total = torch.cuda.mem_get_info()
    filler = torch.empty(max(0, free - head // 2), dtype=torch.uint8, device="cuda")
    said = []
    try:
        with Engine(gpu_model, EngineConfig(gpu_layers=-1, n_parallel=1, n_ctx=512),
                    on_status=said.append) as engine:
            assert engine.plan.layers_on_gpu < engine.model.n_layer
    finally:
        del filler
        torch.cuda.empty_cache()
    assert any("retrying with" in line for line in said), said


def _host_store_check(model: Path, gpu_layers: int) -> None:
    """The host prompt store with the KV cache where `gpu_layers` puts it: a state read out of a
    sequence and written into another continues as the original, and --parallel 1 over
    instructions in turn grades as without the store (within PROB_TOL on a GPU, where the prompts'
    remainders are computed in other batch shapes than without the store)."""
    import numpy as np

    from helpers import RUBRIC
    from prom_local.engine import EngineConfig, SamplingParams
    from prom_local.judging.judge import Judge
    from prom_local.judging.records import record_from_mapping
    from test_host_cache import state_round_trip

    original, loaded = state_round_trip(model, gpu_layers)
    assert np.allclose(original, loaded, atol=1e-3)

    # Instructions that differ from their first token: each replaces the other in the one sequence.
    rows = [{"id": f"q{q}-r{k}", "instruction": f"[사례 {q}] " + "다음 글을 읽고 질문에 답하세요. " * 12,
             "response": f"답 {k}", "rubric": RUBRIC} for k in range(2) for q in range(2)]
    records = [record_from_mapping(row, line=i + 1) for i, row in enumerate(rows)]

    def grades(mib: int):
        config = EngineConfig(n_ctx=1024, gpu_layers=gpu_layers, n_parallel=1, host_cache_mib=mib)
        with Judge(model, engine=config, sampling=SamplingParams(max_tokens=0)) as judge:
            return list(judge.grade_stream(records)), judge.engine.stats.recalled_tokens

    without, _ = grades(0)
    with_store, recalled = grades(64)
    assert recalled > 0
    for a, b in zip(without, with_store):
        assert b.error is None and b.forced
        assert b.probabilities == pytest.approx(a.probabilities, abs=PROB_TOL), b.id


@gpu
@needs_gpu
def test_the_host_prompt_store_round_trips_gpu_kv(gpu_model):
    _host_store_check(gpu_model, -1)


# ----------------------------------------------------------------------------------------------
# Quantized KV cache types on the GPU (--cache-type-k/-v): CUDA's flash-attention kernels for q8_0
# and q4_0 K/V, the state save/load of quantized cells, and auto's choice with the real free memory.

@gpu
@needs_gpu
@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_a_quantized_kv_cache_on_the_gpu_scores_as_on_the_cpu(gpu_model, kv):
    cpu = _forced(gpu_model, 0, cache_type_k=kv, cache_type_v=kv)
    on_gpu = _forced(gpu_model, -1, cache_type_k=kv, cache_type_v=kv)
    for c, g in zip(cpu, on_gpu):
        assert g.error is None and g.forced
        assert g.probabilities == pytest.approx(c.probabilities, abs=PROB_TOL), (kv, c.id)


@gpu
@needs_gpu
def test_a_quantized_gpu_kv_state_round_trips(gpu_model):
    import numpy as np

    from test_host_cache import state_round_trip

    original, loaded = state_round_trip(gpu_model, -1, cache_type_k="q8_0", cache_type_v="q8_0")
    assert np.allclose(original, loaded, atol=1e-3)


@gpu
@needs_gpu
def test_auto_cache_type_is_planned_with_the_real_free_memory(gpu_model):
    from prom_local.engine import Engine, EngineConfig

    said = []
    with Engine(gpu_model, EngineConfig(gpu_layers=None, n_parallel=2, need_tokens=600),
                on_status=said.append) as engine:
        # A tiny model on a real GPU: f16 fits everything, so auto keeps it, and says so.
        assert (engine.kv.k, engine.kv.v) == ("f16", "f16")
    assert any(line.startswith("KV cache f16 (auto") for line in said), said


@gpu
@needs_gpu
def test_drafts_on_the_gpu_verify_and_keep_greedy_output(gpu_model):
    """Drafts from the prompt with every layer on the GPU: on by default there (the measured
    default, drafts.draft_default), drafted rows verified and their rejected KV removed from the GPU's
    cache, greedy text the same as without drafts but at near-ties (CUDA's kernels also round by
    batch shape, and a random tiny model's logits lie close together), verdicts as without drafts."""
    from dataclasses import replace

    from prom_local.engine import EngineConfig
    from test_drafts import greedy_runs, same_but_near_ties

    records = _records()
    config = EngineConfig(n_ctx=1024, gpu_layers=-1, n_parallel=4)
    off_grades, off_outs, off_margins, _, _, _ = greedy_runs(gpu_model, replace(config, draft=0), records, 64)
    grades, outs, _, stats, _, draft = greedy_runs(gpu_model, config, records, 64)
    assert draft > 0 and stats.drafted_tokens > 0, (draft, stats)
    same_but_near_ties(outs, off_outs, off_margins, near_tie=0.25)
    for a, b in zip(grades, off_grades):
        assert a.error is None and a.score is not None
        if a.output == b.output:
            assert a.probabilities == pytest.approx(b.probabilities, abs=PROB_TOL), a.id
