#!/usr/bin/env bash
# Make what benchmarks/gpu_check.sh needs on an offline CUDA machine. Run this where PyPI is reachable:
#
#   benchmarks/make_gpu_bundle.sh [--check]
#
# writes, next to this script (both git-ignored):
#   llama-cpp-python-0.3.36-trimmed.tar.gz  the pinned sdist without .git and vendor/llama.cpp/{models,docs,
#                                           examples,tests} (~12 MB instead of 73 MB; still configures)
#   gpu-wheels/                             pure-Python wheels for the build and for prom-local's check, for
#                                           a machine that has torch + transformers but not these
# --check: also run CMake's configure step on the trimmed tree (CPU backend; seconds, no compiling),
# which is what proves nothing the build needs was cut.
#
# Carry both, with tests/.assets/llama3-tokenizer (the tiny test model's tokenizer), to the CUDA machine.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
OUT="$HERE/llama-cpp-python-$VERSION-trimmed.tar.gz"
WHEELS="$HERE/gpu-wheels"
# Pure-Python wheels (py3-none-any) only: they install on whatever Python the CUDA machine has. numpy,
# jinja2, huggingface-hub and the like come with torch + transformers there.
PURE=(scikit-build-core pathspec packaging diskcache typing-extensions typer shellingham rich markdown-it-py
      mdurl pygments textual mdit-py-plugins linkify-it-py uc-micro-py platformdirs pytest pluggy iniconfig
      pytest-timeout pytest-xdist execnet filelock)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" "llama-cpp-python==$VERSION"
tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION"
rm -rf "$src/.git" "$src/vendor/llama.cpp/"{models,docs,examples,tests}
tar -czf "$OUT" -C "$tmp" "llama_cpp_python-$VERSION"
echo "wrote $OUT ($(du -h "$OUT" | cut -f1))"

rm -rf "$WHEELS"
"$PYTHON" -m pip download --quiet --no-deps --only-binary :all: --dest "$WHEELS" "${PURE[@]}"
echo "wrote $WHEELS ($(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1))"

if [[ "${1:-}" == "--check" ]]; then
    rm -rf "$src"
    tar -xzf "$OUT" -C "$tmp"
    # Configure only (the CUDA build configures the same tree with -DGGML_CUDA=on on the GPU machine).
    cmake -S "$src" -B "$tmp/build" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$tmp/configure.log" 2>&1 \
        || { tail -30 "$tmp/configure.log"; echo "configure FAILED on the trimmed sdist" >&2; exit 1; }
    echo "the trimmed sdist configures ($(grep -c '' "$tmp/configure.log") lines of CMake output, no errors)"
fi
