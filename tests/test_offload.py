"""The GPU layer-fitting arithmetic, with given memory figures (no GPU needed)."""

import pytest

from prom_local.offload import MiB, ModelShape, fewer_layers, parse_gpu_layers, plan_offload

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
    from prom_local.offload import visible_gpu

    assert visible_gpu({}) is None and visible_gpu({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "2"}) == "2"                 # a Ray actor's own GPU
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-5f3a, GPU-77"}) == "GPU-5f3a"
