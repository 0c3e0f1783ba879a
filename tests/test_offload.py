"""The GPU layer-fitting arithmetic, with given memory figures (no GPU needed)."""

import pytest

from prom_local.engine.offload import MiB, ModelShape, fewer_layers, parse_gpu_layers, plan_offload

GiB = 1024 * MiB
# Llama-3-8B at Q4_K_M: 4.9 GB, 32 layers, GQA 32/8 heads, vocab 128256.
LLAMA3_8B_Q4 = ModelShape(file_bytes=4_920_000_000, n_layer=32, n_embd=4096, n_head=32, n_head_kv=8,
                          n_ff=14336, n_vocab=128256)


def test_shape_arithmetic_is_plausible():
    # Weights split between 32 layers and the embeddings/head add up to the file.
    total = 32 * LLAMA3_8B_Q4.layer_bytes + 2 * LLAMA3_8B_Q4.output_bytes
    assert total == pytest.approx(LLAMA3_8B_Q4.file_bytes, rel=0.01)
    # KV cache: 2 (K,V) * 8192 tokens * 1024 (4096*8/32) * 2 bytes = 32 MiB per layer.
    assert LLAMA3_8B_Q4.kv_bytes_per_layer(8192) == 32 * MiB


def test_everything_fits_on_a_big_gpu():
    plan = plan_offload(LLAMA3_8B_Q4, n_ctx=8192, free_bytes=24 * GiB, gpu_supported=True)
    assert plan.n_gpu_layers == -1 and plan.layers_on_gpu == 32 and plan.backend == "gpu"


def test_partial_offload_on_a_laptop_gpu():
    plan = plan_offload(LLAMA3_8B_Q4, n_ctx=8192, free_bytes=4 * GiB, gpu_supported=True)
    per_layer = LLAMA3_8B_Q4.layer_bytes + 32 * MiB
    expected = (4 * GiB - 768 * MiB) // per_layer
    assert plan.n_gpu_layers == plan.layers_on_gpu == expected
    assert 0 < expected < 32
    # A longer context leaves room for fewer layers.
    assert plan_offload(LLAMA3_8B_Q4, n_ctx=65536, free_bytes=4 * GiB, gpu_supported=True).layers_on_gpu < expected


@pytest.mark.parametrize("free, supported", [(512 * MiB, True), (None, True), (80 * GiB, False)])
def test_cpu_when_nothing_fits_or_no_gpu_build(free, supported):
    plan = plan_offload(LLAMA3_8B_Q4, n_ctx=8192, free_bytes=free, gpu_supported=supported)
    assert plan.n_gpu_layers == 0 and plan.backend == "cpu" and "CPU" in plan.reason


def test_parse_gpu_layers_and_retry_steps():
    assert parse_gpu_layers("auto") is None
    assert parse_gpu_layers("all") == -1
    assert parse_gpu_layers("0") == 0 and parse_gpu_layers("20") == 20
    with pytest.raises(ValueError, match="--gpu-layers"):
        parse_gpu_layers("lots")
    assert fewer_layers(-1, 32) == 24
    assert fewer_layers(3, 32) == 2
    assert fewer_layers(1, 32) == 0


def test_free_memory_is_asked_of_the_gpu_this_process_sees():
    from prom_local.engine.devices import visible_gpu

    assert visible_gpu({}) is None and visible_gpu({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "2"}) == "2"                 # a Ray actor's own GPU
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-5f3a, GPU-77"}) == "GPU-5f3a"


# ----------------------------------------------------------------------------------------------
# KV memory sized to the work: Llama-3-8B Q4_K_M (4.9 GB, 32 layers, 128 KiB of KV per token) on
# laptop and desktop GPUs, the default 8,192 tokens per sequence against 2,048 (a judge record of
# ~1,500 prompt tokens + 512 new + the reserve, rounded up).

def test_kv_per_token_of_llama3_8b_is_128_kib():
    per_token = LLAMA3_8B_Q4.n_layer * LLAMA3_8B_Q4.kv_bytes_per_layer(1)
    assert per_token == 128 * 1024


@pytest.mark.parametrize("gpu_gib, default_parallel, sized_parallel", [
    (6, 1, 2), (8, 2, 10), (12, 6, 16), (24, 16, 16)])
def test_sized_context_fits_more_sequences(gpu_gib, default_parallel, sized_parallel):
    from prom_local.engine.offload import auto_plan

    default = auto_plan(LLAMA3_8B_Q4, n_ctx=8192, gpu_supported=True, gpu_free=gpu_gib * GiB, ram_free=16 * GiB)
    sized = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=gpu_gib * GiB, ram_free=16 * GiB)
    assert (default.n_parallel, sized.n_parallel) == (default_parallel, sized_parallel)
    # Whatever --parallel was chosen, its KV cache still fits beside the weights.
    for plan in (default, sized):
        assert plan.gpu_bytes <= gpu_gib * GiB - 768 * MiB
        assert plan.kv_bytes == plan.n_parallel * plan.n_ctx * 128 * 1024


def test_six_gib_default_context_leaves_the_output_head_on_the_cpu():
    from prom_local.engine.offload import auto_plan

    default = auto_plan(LLAMA3_8B_Q4, n_ctx=8192, gpu_supported=True, gpu_free=6 * GiB, ram_free=16 * GiB)
    sized = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=6 * GiB, ram_free=16 * GiB)
    # 32 repeating layers but not the 33rd (the 128,256-row output head): every token's logits
    # are then computed on the CPU. Sized to the work, everything is on the GPU.
    assert default.offload.n_gpu_layers == 32 and "output head" in default.offload.reason
    assert default.host_bytes > LLAMA3_8B_Q4.output_bytes
    assert sized.offload.n_gpu_layers == -1 and sized.offload.layers_on_gpu == 32


def test_context_size_from_the_longest_record():
    from prom_local.engine.offload import context_size

    # 1,500 prompt tokens + 512 new + 16 reserve = 2,028 -> 2,048.
    n, why = context_size(1500 + 512, ctx=None, trained=8192, reserve=16)
    assert n == 2048 and "sized to the work" in why and "trained context 8,192" in why
    # Exactly on a step boundary stays there; one token more takes the next step.
    assert context_size(2048 - 16, ctx=None, trained=8192, reserve=16)[0] == 2048
    assert context_size(2048 - 15, ctx=None, trained=8192, reserve=16)[0] == 2304
    # --ctx caps it, and says what happens to the records that do not fit.
    n, why = context_size(3000, ctx=1024, trained=8192, reserve=16)
    assert n == 1024 and "--ctx 1,024" in why and "error rows" in why
    # Beyond the trained context (no --ctx): the trained context.
    assert context_size(20000, ctx=None, trained=8192, reserve=16)[0] == 8192
    # Unknown need: min(8192, trained), or --ctx.
    assert context_size(None, ctx=None, trained=131072, reserve=16)[0] == 8192
    assert context_size(None, ctx=None, trained=2048, reserve=16)[0] == 2048
    assert context_size(None, ctx=4096, trained=8192, reserve=16)[0] == 4096


def test_auto_plan_on_cpu_and_with_given_layers():
    from prom_local.engine.offload import auto_plan

    cpu = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=False, gpu_free=None, ram_free=16 * GiB)
    assert cpu.offload.n_gpu_layers == 0 and cpu.gpu_bytes == 0
    assert cpu.n_parallel == 4 and "(auto, CPU" in cpu.parallel_reason
    assert cpu.host_bytes == LLAMA3_8B_Q4.file_bytes + cpu.kv_bytes
    # --gpu-layers 8 on an 8 GiB GPU: a quarter of the layers and their KV cache on the GPU.
    part = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=True, gpu_free=8 * GiB, ram_free=16 * GiB,
                     gpu_layers=8, parallel=4)
    assert part.offload.layers_on_gpu == 8 and part.n_parallel == 4
    assert part.gpu_bytes + part.host_bytes == pytest.approx(LLAMA3_8B_Q4.file_bytes + part.kv_bytes, rel=1e-6)
    # A GPU layer count asked of a CPU-only build runs on the CPU, and says so.
    asked = auto_plan(LLAMA3_8B_Q4, n_ctx=2048, gpu_supported=False, gpu_free=None, ram_free=16 * GiB,
                      gpu_layers=-1)
    assert asked.offload.n_gpu_layers == 0 and "no GPU offload" in asked.offload.reason


def test_retry_sequence_after_out_of_memory_loads():
    from prom_local.engine.offload import retry_layers

    assert retry_layers(-1, 32) == [24, 18, 14, 11, 9, 7, 6, 5, 4, 3, 2, 1, 0]
    assert retry_layers(2, 2) == [1, 0]
    assert retry_layers(0, 32) == []


def test_the_nvidia_smi_reader_lists_only_the_gpus_cuda_visible_devices_names_in_its_order():
    from prom_local.engine.devices import visible_gpus

    smi = ("0, GPU-aaaa1111-0000, NVIDIA H100, 81559, 80000\n"
           "1, GPU-bbbb2222-0000, NVIDIA H100, 81559, 1000\n"
           "2, GPU-cccc3333-0000, NVIDIA H100, 81559, 500\n")
    every = visible_gpus(smi, {})
    assert [d.name for d in every] == ["GPU 0", "GPU 1", "GPU 2"] and every[1].free_bytes == 1000 * 1024 ** 2
    assert [d.name for d in visible_gpus(smi, {"CUDA_VISIBLE_DEVICES": "2"})] == ["GPU 2"]   # a Ray actor's
    assert [d.name for d in visible_gpus(smi, {"CUDA_VISIBLE_DEVICES": "2,0"})] == ["GPU 2", "GPU 0"]
    assert [d.name for d in visible_gpus(smi, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"})] == ["GPU 1"]
    assert visible_gpus(smi, {"CUDA_VISIBLE_DEVICES": "7"}) == []


def test_log_softmax_is_the_log_of_the_normalised_probabilities_even_for_huge_logits():
    import numpy as np

    from prom_local.engine import log_softmax

    logits = np.array([1000.0, 999.0, 990.0], dtype=np.float32)
    log_p = log_softmax(logits)
    assert log_p.dtype == np.float64 and np.isfinite(log_p).all()
    assert np.exp(log_p).sum() == pytest.approx(1.0)
    assert log_p[0] - log_p[1] == pytest.approx(1.0)
