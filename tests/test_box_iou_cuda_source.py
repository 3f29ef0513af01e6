"""Grid limits of the CUDA box kernels, read from their source (no GPU here; the `cuda`-marked tests
in test_box_iou.py run them when there is one).

CUDA grids hold at most 2^31 - 1 blocks in x and 65535 in y and z. A kernel launched on a grid
that was capped to fit (``cuda::grid_stride_blocks`` for x, ``capped_blocks`` for y and z) must
loop over that axis (``gridDim``): ``pairwise_grad2_reduce_kernel`` did not, so past about 5.4e8
columns the tail of grad2 stayed 0. And no y or z extent may be launched uncapped.
"""
import pathlib
import re

import pytest

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "ops" / "cuda"
FILES = ["box_iou_kernel.cu", "giou_loss_kernel.cu"]
AXES = ("x", "y", "z")


def kernel_bodies(source):
    """{name: body} of every __global__ function."""
    bodies = {}
    for match in re.finditer(r"__global__\s+void\s+(\w+)\s*\(", source):
        start = source.index("{", match.end())
        depth, i = 0, start
        while True:
            depth += {"{": 1, "}": -1}.get(source[i], 0)
            if depth == 0:
                break
            i += 1
        bodies[match.group(1)] = source[start:i + 1]
    return bodies


def launches(source):
    """(kernel, [grid expression per axis]) of every <<<...>>> launch; a dim3 grid is looked up."""
    found = []
    for match in re.finditer(r"(\w+)<scalar_t>\s*<<<(.+?)>>>", source, re.S):
        kernel, grid = match.group(1), split_arguments(match.group(2))[0]
        if re.fullmatch(r"\w+", grid):  # a dim3 declared before the launch
            decl = list(re.finditer(r"dim3\s+" + grid + r"\((.*?)\);", source[:match.start()], re.S))[-1]
            axes = split_arguments(decl.group(1))
        else:
            axes = [grid]
        found.append((kernel, axes))
    return found


def split_arguments(text):
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current += ch
    return parts + [current.strip()]


@pytest.mark.parametrize("name", FILES)
def test_capped_grid_axes_are_grid_stride_loops(name):
    source = (CUDA_DIR / name).read_text()
    bodies = kernel_bodies(source)
    found = launches(source)
    assert found and bodies
    for kernel, axes in found:
        for axis, expression in zip(AXES, axes):
            capped = "grid_stride_blocks" in expression or "capped_blocks" in expression
            if axis != "x":
                assert capped, f"{name}: {kernel} launches axis {axis} uncapped ({expression}); the limit is 65535"
            if capped:
                assert f"gridDim.{axis}" in bodies[kernel], f"{name}: {kernel} must loop over its capped grid axis {axis}"


def test_the_check_sees_a_missing_grid_stride_loop():
    """Guards the check: the reduce kernel as it was (one thread per column, capped grid) fails it."""
    source = """
    template <typename scalar_t>
    __global__ void reduce(const float* p, scalar_t* out, int64_t n) {
      const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
      if (r >= n) return;
      out[r] = p[r];
    }
    void run() { reduce<scalar_t><<<cuda::grid_stride_blocks(n, 256), 256, 0, stream>>>(p, out, n); }
    """
    (kernel, axes), = launches(source)
    assert kernel == "reduce" and "grid_stride_blocks" in axes[0]
    assert "gridDim.x" not in kernel_bodies(source)["reduce"]
