"""The Triton box kernels compiled ahead of time for a Hopper GPU (sm_90), without a GPU: what the
interpreter cannot show, because it runs the kernels with NumPy.

* float16 gradients saturate at +-65504 and keep NaN: ``tl.clamp`` (propagate_nan=NONE) compiled to
  ``min.xorsign.abs``, which turns NaN into +-65504 on a GPU;
* the NaN rule survives compilation: the poison ``x - x`` and relu_side's ``x * 0`` are computed,
  not folded to 0 (LLVM may fold them only under fast-math flags);
* divisions are IEEE (``div.rn``), not Triton's default ``div.full.f32`` approximation;
* no kernel of the pairwise backward spills at its tile size (float64 spilled 5-10.7 KB at
  num_warps=4 before the tiles were sized; registers and stack from ``cuobjdump -res-usage``).

Needs Triton's NVIDIA backend (bundled with the triton wheel), not a GPU; skipped under
``TRITON_INTERPRET=1``, where ``@triton.jit`` gives interpreted functions that cannot be compiled.
"""
import os
import re
import subprocess
import tempfile

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("compiling needs the real @triton.jit (TRITON_INTERPRET=1 is set)", allow_module_level=True)
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - very old Triton
    pytest.skip("this Triton has no ahead-of-time compile API", allow_module_level=True)

from detr_ops.triton import box_iou  # noqa: E402
from detr_ops.triton.box_math import poison, relu_side, saturate_half  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_kernel(fn, signature, constexprs, num_warps=4):
    try:
        return triton.compile(ASTSource(fn, signature, constexprs), target=TARGET, options=dict(num_warps=num_warps))
    except Exception as e:  # no NVIDIA backend or no ptxas in this Triton install
        if "backend" in str(e).lower() or "ptxas" in str(e).lower():
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        raise


def signature_of(fn, dtype, ints=("N", "M", "K")):
    return {name: (f"*{dtype}" if name.endswith("_ptr") else "i32" if name in ints else
                   dtype if name == "eps" else "constexpr") for name in fn.arg_names}


def instructions(ptx):
    return re.findall(r"^\s*(?:@%p\d+\s+)?([a-z]+(?:\.[\w]+)*)", ptx, re.M)


@triton.jit
def _saturate_probe(x_ptr, y_ptr):
    i = tl.arange(0, 128)
    tl.store(y_ptr + i, saturate_half(tl.load(x_ptr + i)).to(tl.float16))


@triton.jit
def _clamp_probe(x_ptr, y_ptr):
    i = tl.arange(0, 128)
    tl.store(y_ptr + i, tl.clamp(tl.load(x_ptr + i), -65504.0, 65504.0).to(tl.float16))


@triton.jit
def _poison_probe(x_ptr, y_ptr):
    i = tl.arange(0, 128)
    x = tl.load(x_ptr + i)
    tl.store(y_ptr + i, poison(x) + relu_side(x))


def nan_dropping_min_max(ptx):
    """min/max instructions that return the other operand for a NaN (no .NaN qualifier)."""
    return [op for op in instructions(ptx) if op.split(".")[0] in ("min", "max") and ".NaN" not in op
            and not op.split(".")[-1].startswith(("s", "u", "b"))]


def test_the_check_sees_tl_clamp_drop_nan():
    """Guards the check below: the clamp it replaced does compile to NaN-dropping instructions."""
    ptx = compile_kernel(_clamp_probe, {"x_ptr": "*fp32", "y_ptr": "*fp16"}, {}).asm["ptx"]
    assert "xorsign" in ptx or nan_dropping_min_max(ptx)


def test_float16_saturation_keeps_nan():
    ptx = compile_kernel(_saturate_probe, {"x_ptr": "*fp32", "y_ptr": "*fp16"}, {}).asm["ptx"]
    assert "xorsign" not in ptx and not nan_dropping_min_max(ptx), ptx


def test_float16_gradient_stores_keep_nan():
    """The real store path: every float16 gradient of the loss backward goes through it."""
    fn = box_iou._loss_backward_kernel
    sig = signature_of(fn, "fp16")
    sig["g_ptr"], sig["eps"] = "*fp32", "fp32"
    ptx = compile_kernel(fn, sig, dict(CXCYWH=True, FP64=False, BLOCK=256)).asm["ptx"]
    assert "xorsign" not in ptx


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_poison_and_relu_side_are_not_folded(dtype):
    ops = instructions(compile_kernel(_poison_probe, {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"}, {}).asm["ptx"])
    bits = dtype[2:]
    # x - x and x * 0 stay (folded, they would leave a plain max(x, 0) or nothing)
    assert any(op.startswith("sub") and op.endswith(f".f{bits}") for op in ops), ops
    assert any(op.startswith(("mul", "fma")) and op.endswith(f".f{bits}") for op in ops), ops


KERNELS = {
    "forward": (box_iou._pairwise_kernel, "forward"),
    "loss": (box_iou._loss_kernel, None),
    "loss_backward": (box_iou._loss_backward_kernel, None),
}


@pytest.mark.parametrize("dtype", ["fp32", "fp64", "fp16"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_compile_with_ieee_divisions(kernel, dtype):
    """Every kernel compiles for sm_90 in each storage dtype, and all its divisions are IEEE
    (div.rn). tl.div_rn accepts float32 only: used on float64 values it raised at compile time on a
    GPU, while the interpreter ran it (box_math.div picks ``/`` for float64, already div.rn.f64)."""
    fn, tiles = KERNELS[kernel]
    wide = dtype == "fp64"
    sig = signature_of(fn, dtype)
    if "g_ptr" in sig:
        sig["g_ptr"] = "*fp64" if wide else "*fp32"  # the loss gradient is in the computation dtype
    if "out_ptr" in sig and kernel == "loss":
        sig["out_ptr"] = "*fp64" if wide else "*fp32"
    if "eps" in sig:
        sig["eps"] = "fp32"
    meta = dict(CXCYWH=True, FP64=wide)
    if tiles:
        block_n, block_m = box_iou._tiles(tiles, torch.float64 if wide else torch.float32)
        meta.update(GENERALIZED=True, BLOCK_N=block_n, BLOCK_M=block_m)
    else:
        meta.update(BLOCK=256)
    ptx = compile_kernel(fn, sig, meta).asm["ptx"]
    # floating-point ones (the pairwise kernels also divide integers, decoding the program id)
    divisions = [op for op in instructions(ptx) if op.startswith(("div", "rcp")) and op.endswith((".f32", ".f64"))]
    assert divisions and all(op.startswith("div.rn") for op in divisions), divisions


def resources(kernel):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        report = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", report).groups()
    return int(regs), int(stack)


@pytest.mark.parametrize("dtype", ["fp64", "fp32"])
@pytest.mark.parametrize("kernel", ["grad1", "grad2"])
def test_pairwise_backward_does_not_spill(kernel, dtype):
    """The heaviest variant (GIoU of cxcywh boxes) at the tile the launcher picks."""
    if not os.path.exists(CUOBJDUMP):
        pytest.skip("no cuobjdump in this Triton install")
    fn = getattr(box_iou, f"_pairwise_{kernel}_kernel")
    block_n, block_m = box_iou._tiles(kernel, torch.float64 if dtype == "fp64" else torch.float32)
    compiled = compile_kernel(fn, signature_of(fn, dtype), dict(CXCYWH=True, GENERALIZED=True, FP64=dtype == "fp64",
                                                                 BLOCK_N=block_n, BLOCK_M=block_m))
    regs, stack = resources(compiled)
    assert stack == 0, f"{kernel} {dtype} at {block_n}x{block_m}: {regs} registers, {stack} bytes of stack (spills)"
