#!/usr/bin/env bash
# One-shot proof of prom-local's CUDA path, on a machine with nvcc and no internet (not part of CI).
#
#   benchmarks/gpu_check.sh [SDIST]
#
# 1. builds llama-cpp-python with CUDA from the pinned sdist into a private venv (.gpu-check/venv; it sees
#    the machine's torch and transformers), CUDA for this machine's GPU only, all cores;
# 2. makes the test models there: a tiny random Llama 3 checkpoint -> llama.cpp's converter (the one inside
#    the sdist) -> Q8_0 and Q4_K_M through `prom-local convert` (nothing is downloaded);
# 3. runs `pytest -m gpu` (tests/test_gpu.py), `prom-local doctor`, and `prom-local bench` with
#    --gpu-layers all, with a forced partial offload (1 of 2 layers) and on the CPU for reference,
#    then flash attention on vs off (bench, and benchmarks/flash_fidelity.py: same scores, cached =
#    cold?) and benchmarks/drafts.py (drafts from the prompt off vs on) with every layer on the GPU;
# all into one log. Planned to finish within 9 minutes on 16 cores (the build is most of it).
#
# Bring along (made by benchmarks/make_gpu_bundle.sh where PyPI is reachable; all git-ignored):
#   SDIST (default: benchmarks/llama-cpp-python-0.3.36-trimmed.tar.gz, or $GPU_CHECK_SDIST)
#   benchmarks/gpu-wheels/       pure-Python wheels (typer, rich, textual, pytest, scikit-build-core...)
#   tests/.assets/llama3-tokenizer/  the Llama 3 tokenizer the tiny model is built with
#
# Environment: GPU_CHECK_WORK (default .gpu-check), GPU_CHECK_LOG (default $GPU_CHECK_WORK/gpu_check.log),
# GPU_CHECK_WHEELS, GPU_CHECK_PYTHON (the base interpreter, default python3). GPU_CHECK_SKIP_BUILD=1 uses
# GPU_CHECK_PYTHON as it is instead of building, and GPU_CHECK_BENCH=0 skips the bench runs (to rehearse
# the rest on a CPU machine, where bench on 16 records would take long).
# Exit status: 0 when every step passed, else the number of failed steps.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
SDIST="${1:-${GPU_CHECK_SDIST:-$HERE/llama-cpp-python-0.3.36-trimmed.tar.gz}}"
WHEELS="${GPU_CHECK_WHEELS:-$HERE/gpu-wheels}"
WORK="${GPU_CHECK_WORK:-$ROOT/.gpu-check}"
BASE_PY="${GPU_CHECK_PYTHON:-python3}"
mkdir -p "$WORK"
LOG="${GPU_CHECK_LOG:-$WORK/gpu_check.log}"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

START=$SECONDS
FAILED=()
step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
run() {  # run NAME CMD...: log the command, its output and its status; keep going on failure
    local name="$1"; shift
    echo "+ $*"
    local t0=$SECONDS
    "$@"
    local rc=$?
    echo "--- $name: exit $rc, $((SECONDS - t0)) s"
    [[ $rc -eq 0 ]] || FAILED+=("$name (exit $rc)")
    return $rc
}
finish() {
    step "done in $((SECONDS - START)) s (budget: 540 s on 16 cores)"
    if [[ ${#FAILED[@]} -eq 0 ]]; then echo "ALL STEPS PASSED"; else printf 'FAILED: %s\n' "${FAILED[@]}"; fi
    echo "log: $LOG"
    exit "${#FAILED[@]}"
}

step "preflight: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores"
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv 2>&1 || echo "(no nvidia-smi)"
if [[ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]]; then
    for tool in nvcc cmake; do
        command -v "$tool" >/dev/null || { echo "missing: $tool"; FAILED+=("preflight: no $tool"); finish; }
    done
    nvcc --version | tail -2
    cmake --version | head -1
    [[ -f "$SDIST" ]] || { echo "missing sdist: $SDIST (make it with benchmarks/make_gpu_bundle.sh)"; FAILED+=("preflight: no sdist"); finish; }
fi
"$BASE_PY" -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| transformers', transformers.__version__)" || { FAILED+=("preflight: torch/transformers"); finish; }
TOKENIZER="$ROOT/tests/.assets/llama3-tokenizer/tokenizer.json"
[[ -f "$TOKENIZER" ]] || { echo "missing $TOKENIZER: bring tests/.assets/llama3-tokenizer along"; FAILED+=("preflight: tokenizer"); finish; }
FIND_LINKS=()
[[ -d "$WHEELS" ]] && FIND_LINKS=(--find-links "$WHEELS")

# The converter comes from the sdist (vendor/llama.cpp); unpacking takes a second.
SRC="$WORK/src/llama_cpp_python-0.3.36"
if [[ -f "$SDIST" ]]; then
    rm -rf "$WORK/src" && mkdir -p "$WORK/src" && tar -xzf "$SDIST" -C "$WORK/src"
    SRC="$(ls -d "$WORK"/src/llama_cpp_python-* | head -1)"
fi

if [[ "${GPU_CHECK_SKIP_BUILD:-0}" == 1 ]]; then
    step "build: skipped (GPU_CHECK_SKIP_BUILD=1), using $BASE_PY as it is"
    PY="$BASE_PY"
else
    step "venv: $WORK/venv (with the system's torch and transformers)"
    rm -rf "$WORK/venv"
    run venv "$BASE_PY" -m venv --system-site-packages "$WORK/venv" || finish
    PY="$WORK/venv/bin/python"
    # What torch + transformers do not bring; already-installed packages are kept.
    run deps "$PY" -m pip install --quiet --no-index "${FIND_LINKS[@]}" scikit-build-core diskcache typer rich \
        textual platformdirs pytest pytest-timeout pytest-xdist execnet filelock || finish

    step "build llama-cpp-python with CUDA ($(nproc) jobs)"
    # CUDA for this GPU only (native), the CPU side for generic x86-64 + AVX2 (a native build may use
    # AMX kernels, which crash in llama_decode on some VMs), and nothing llama-cpp-python does not ship.
    cpu_flags="-DGGML_NATIVE=OFF"
    [[ "$(uname -m)" == x86_64 ]] && cpu_flags+=" -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native $cpu_flags -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"
    export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
    command -v ninja >/dev/null && export CMAKE_GENERATOR=Ninja
    echo "CMAKE_ARGS=$CMAKE_ARGS"
    run build "$PY" -m pip install --no-index "${FIND_LINKS[@]}" --no-build-isolation --no-deps --no-cache-dir \
        --force-reinstall "$SDIST" || finish
fi
run offload-compiled-in "$PY" -c "import llama_cpp, prom_local.engine as e; print('llama-cpp-python',
llama_cpp.__version__, '| backend', e.build_backend(), '| GPU offload', bool(llama_cpp.llama_supports_gpu_offload()))"

step "test models: tiny Llama 3 -> llama.cpp converter (from the sdist) -> Q8_0, Q4_K_M"
# The sdist's converter and its gguf package first on the path; this checkout's code after them.
export PYTHONPATH="$SRC/vendor/llama.cpp:$SRC/vendor/llama.cpp/gguf-py:$ROOT"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
cd "$ROOT"
rm -rf "$WORK/tiny-hf" "$WORK/models"
run checkpoint "$PY" -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from tiny_llama import build_tiny_llama3
print(build_tiny_llama3(Path('$WORK/tiny-hf')))"
run convert "$PY" -m prom_local convert "$WORK/tiny-hf" --out "$WORK/models" --name tiny-llama3 \
    --quant Q8_0 --quant Q4_K_M --quiet
MODEL="$WORK/models/tiny-llama3/tiny-llama3.Q8_0.gguf"
ls -la "$WORK/models/tiny-llama3" 2>&1

step "pytest -m gpu (and the CPU arithmetic of offloading)"
# -n 0: no xdist workers (pyproject asks for one per CPU); the GPU tests run one at a time.
run pytest-gpu env PROM_LOCAL_GPU_MODELS="$WORK/models" "$PY" -m pytest -p no:cacheprovider -n 0 -m gpu -v -rs \
    tests/test_gpu.py
run pytest-offload "$PY" -m pytest -p no:cacheprovider -n 0 -q -m "not gpu" tests/test_offload.py tests/test_gpu.py

step "prom-local doctor"
run doctor "$PY" -m prom_local doctor -m "$MODEL"
run doctor-json "$PY" -m prom_local doctor -m "$MODEL" --json

if [[ "${GPU_CHECK_BENCH:-1}" == 0 ]]; then step "bench: skipped (GPU_CHECK_BENCH=0)"; finish; fi
step "prom-local bench: every layer on the GPU, one of two, none"
BENCH=(-m "$MODEL" --records 16 --max-tokens 64)
run bench-all "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers all --parallel 1,4,16
run bench-partial "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers 1 --parallel 1,16
run bench-cpu "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers 0 --parallel 1,16
step "KV cache types on the GPU: q8_0 and q4_0 (flash attention on), and auto's plan on an 8 GiB GPU"
run bench-kv-q8 "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers all --parallel 1,16 --cache-type-k q8_0 --cache-type-v q8_0
run bench-kv-q4 "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers all --parallel 16 --cache-type-k q4_0 --cache-type-v q4_0
step "flash attention on vs off on the GPU (prompts and generation, --parallel 1 and 8)"
run bench-fa-on "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers all --parallel 1,8 --flash-attn on
run bench-fa-off "$PY" -m prom_local bench "${BENCH[@]}" --gpu-layers all --parallel 1,8 --flash-attn off
# Does a cached prefix give the cold result on the GPU with flash attention on (the CPU's 64-row rule)?
run fa-fidelity "$PY" benchmarks/flash_fidelity.py --model "$MODEL" --records 8 --max-tokens 32 --parallel 1 8
run doctor-kv-auto "$PY" -m prom_local doctor -m "$MODEL" --gpu-memory 8GiB --ctx 8192 --parallel 16
# Drafts from the prompt off vs on, every layer on the GPU (pytest -m gpu above checks their output).
run drafts "$PY" benchmarks/drafts.py --model "$MODEL" --gpu-layers -1 --records 8 --max-tokens 64 --parallel 1 4
finish
