#!/usr/bin/env bash
# Downloads into .whl/ exactly what the GPU machine lacks (it has torch 2.11 + CUDA 13.0, Triton,
# SciPy, pytest, pytest-benchmark, hypothesis, transformers and onnxruntime under Python 3.12, and
# no network), for scripts/gpu_check.sh to install there:
#   for the tests and the build: expecttest (torch.library.opcheck), ninja (a parallel build);
#   for the benchmarks' baselines: lap (not lapx as well: lapx installs the same `lap` module, and
#     the two cannot share one site-packages);
#   for --peers: torch-linear-assignment 0.1.0 (sdist; built there with its legacy CUDA extension),
#     ms-deform-attn 1.0.1 (the packaged original Deformable DETR kernel: only CUDA 12 wheels exist,
#     so the CUDA 12 runtime, nvidia-cuda-runtime-cu12, comes with it) and torch-ms-deform-attn
#     0.1.1 (sdist that compiles the Deformable DETR CUDA kernel there), and what building these two
#     sdists without isolation needs whatever the machine's setuptools: setuptools>=77,
#     packaging>=24.2, wheel (installed for that build only).
# Carry it with the device call: carry=[".whl", "build/prebuilt"].
#
#   bash scripts/fetch_gpu_wheels.sh [DIR]      (default .whl)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.whl}
mkdir -p "$dir"
# pip of an environment with torch: preparing an sdist's metadata (torch-ms-deform-attn) imports it.
py=${PYTHON:-$root/.venv/bin/python}
pip=("$py" -m pip download -q --disable-pip-version-check --no-deps -d "$dir")
target=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi none --abi abi3
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
"${pip[@]}" "${target[@]}" expecttest ninja lap ms-deform-attn==1.0.1 "nvidia-cuda-runtime-cu12==12.9.*" \
  "setuptools>=77" "packaging>=24.2" wheel
"${pip[@]}" --no-binary=:all: --no-build-isolation torch-linear-assignment==0.1.0 torch-ms-deform-attn==0.1.1
ls -la "$dir"
du -sh "$dir"
