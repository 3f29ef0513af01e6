#!/usr/bin/env bash
# The CUDA-enabled build check, for a machine with nvcc but no GPU (CI, the developers' machines):
# builds every .cu file against the default PyPI torch (CUDA 13.0), imports the extension, checks
# that each operator with a CPU kernel also has a CUDA kernel, checks the compiled PTX for fast-math
# code (scripts/check_cuda_ptx.py), and runs the CPU test suite in that build. The build happens in
# a copy of the tracked files, so the main tree's CPU build is untouched.
#
# The build runs with NVCC_APPEND_FLAGS=-Xptxas=-v and keeps its log (build/cuda-check/build.log):
# scripts/cuda_resources.py turns ptxas's report into the resource and occupancy table of every CUDA
# kernel (build/cuda-check/cuda_resources.md) and prints what changed against docs/cuda_resources.md
# (information only: register counts move with every nvcc). DETR_OPS_UPDATE_DOCS=1 also writes the
# new table to docs/cuda_resources.md.
#
# Environment: CUDA_VENV (default .venv-cuda), CUDA_HOME (default /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default 9.0+PTX: one architecture keeps the build short, +PTX embeds the
# PTX the fast-math check reads), CUDA_TORCH (default torch==2.11.0).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${CUDA_VENV:-$root/.venv-cuda}
work=$root/build/cuda-check
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
export FORCE_CUDA=1

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# torch first, so that the requirements (triton among them) resolve against its pins
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${CUDA_TORCH:-torch==2.11.0}"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-dev.txt"

rm -rf "$work" && mkdir -p "$work"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work")
cd "$work"
NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-Xptxas=-v" "$venv/bin/python" setup.py build_ext --inplace \
  2>&1 | tee build.log
header="nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, flags as setup.py sets them."
"$venv/bin/python" -m scripts.cuda_resources build.log --sources csrc/ops/cuda --markdown cuda_resources.md \
  --compare "$root/docs/cuda_resources.md" --header "$header"
if [ "${DETR_OPS_UPDATE_DOCS:-0}" = 1 ]; then
  cp cuda_resources.md "$root/docs/cuda_resources.md"
  echo "wrote docs/cuda_resources.md"
fi
PYTHONPATH="$work" "$venv/bin/python" scripts/check_cuda_kernels.py
# cuobjdump: the toolkit's where it has one, else the copy the triton package ships
cuobjdump=$CUDA_HOME/bin/cuobjdump
if [ ! -x "$cuobjdump" ]; then
  cuobjdump=$("$venv/bin/python" -c \
    'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))')
fi
"$venv/bin/python" scripts/check_cuda_ptx.py "$cuobjdump" detr_ops/_C*.so
# The op, matcher, integration and tooling tests on torch 2.11; the models', ONNX exports', docs' and
# packaging tests are pure Python above the ops and run by make test on torch 2.13 (here they would
# add minutes to the longest CI stage).
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests --ignore-glob='tests/test_models_*' \
  --ignore-glob='tests/test_onnx_*' --ignore=tests/test_docs_examples.py --ignore=tests/test_packaging.py
