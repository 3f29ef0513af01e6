#!/usr/bin/env bash
# Builds the fallback that the GPU check can load when building there takes too long:
# libdetr_ops.so (the CMake library: every operator, CPU and CUDA kernels, no pybind11 module, so no
# Python ABI) against the CUDA 13.0 PyPI torch 2.11.0 of .venv-cuda, the torch of the GPU machine.
# `torch.ops.load_library` loads it under any Python; detr_ops uses it when detr_ops._C is missing
# and DETR_OPS_LIBRARY points at it (detr_ops/_extension.py).
#
#   bash scripts/build_prebuilt.sh [OUT_DIR]     (default build/prebuilt; needs .venv-cuda, see
#                                                 `make cuda-build-check`)
# Environment: CUDA_VENV (default .venv-cuda), CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST
# (default 9.0: the H200 of the GPU machine), MAX_JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$root/build/prebuilt}" && cd "${1:-$root/build/prebuilt}" && pwd)
venv=${CUDA_VENV:-$root/.venv-cuda}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
[ -x "$venv/bin/python" ] || { echo "build_prebuilt: $venv is missing; run make cuda-build-check first" >&2; exit 1; }
torch_version=$("$venv/bin/python" -c 'import torch; print(torch.__version__)')
case "$torch_version" in 2.11.0*) ;; *) echo "build_prebuilt: $venv has torch $torch_version, want 2.11.0 (the GPU machine's)" >&2; exit 1;; esac

# torch's CMake config takes the architectures from TORCH_CUDA_ARCH_LIST (it ignores
# CMAKE_CUDA_ARCHITECTURES), and looks for libnvrtc in the toolkit, where this machine has none: the
# one of the nvidia-cuda-nvrtc wheel that torch installed is the same library the GPU machine has.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
nvrtc=$("$venv/bin/python" -c 'import glob, os, nvidia; print((sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "cu*", "lib", "libnvrtc.so.*"))) or [""])[0])')
build=$root/build/cmake-prebuilt
start=$SECONDS
cmake -S "$root" -B "$build" -G Ninja -DWITH_CUDA=ON -DDETR_OPS_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCUDAToolkit_ROOT="$CUDA_HOME" ${nvrtc:+-DCUDA_nvrtc_LIBRARY="$nvrtc"} \
  -DPython3_EXECUTABLE="$venv/bin/python" > "$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build "$build" -j "${MAX_JOBS:-2}" >> "$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
cp "$build/libdetr_ops.so" "$out/libdetr_ops.so"
strip --strip-debug "$out/libdetr_ops.so"
# Proof that it loads without Python bindings and registers the CUDA kernels (no GPU needed).
"$venv/bin/python" - "$out/libdetr_ops.so" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])
has = torch._C._dispatch_has_kernel_for_dispatch_key
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("detr_ops::"))
cuda = [n for n in ops if has(n, "CUDA")]
print(f"build_prebuilt: {sys.argv[1]} registers {len(ops)} operators, {len(cuda)} with CUDA kernels")
assert cuda, "no CUDA kernels registered"
PY
{
  echo "torch $torch_version"
  echo "TORCH_CUDA_ARCH_LIST $TORCH_CUDA_ARCH_LIST"
  echo "nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  echo "commit $(git -C "$root" rev-parse HEAD)$(git -C "$root" diff --quiet -- csrc CMakeLists.txt || echo '+local changes')"
} > "$out/BUILD_INFO"
ls -la "$out/libdetr_ops.so"
echo "build_prebuilt: done in $((SECONDS - start)) s"
