"""Triton kernels and launchers of the box-overlap ops; ``detr_ops/_registrations.py`` defines them
as ``torch.ops.detr_ops.{pairwise_iou,pairwise_iou_backward,giou_loss,giou_loss_backward}_triton``.

The math is box_math.py's (the rules of csrc/ops/common/box_iou.h, NaN rule included). The pairwise
forward computes a [BLOCK_N, BLOCK_M] tile per program; the backward reduces each row (grad of
boxes1) and each column (grad of boxes2) inside one program, so no atomics are needed and the
result is deterministic. Half and bfloat16 compute in float32, float64 in float64.

Grids are one-dimensional: CUDA limits grid dimensions 1 and 2 to 65535, so a batch of more than
65535 images, or more than 65535 column tiles, did not launch. Every program decodes its (batch,
row tile, column tile) from the one program id, in int64; a launch that needs more than 2^31 - 1
programs raises a ValueError naming the sizes. Launches run on the inputs' GPU (device guard).
"""
import contextlib

import torch
import triton
import triton.language as tl

from detr_ops import _box_checks
from detr_ops._dtypes import acc_dtype
from detr_ops.triton._launch import launch
from detr_ops.triton.box_math import iou, iou_grad, load_box, store_grad

_BLOCK_K = 256
_MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid dimension 0


# (BLOCK_N, BLOCK_M) of each pairwise kernel, float32 (also float16 / bfloat16, computed in
# float32) and float64, at num_warps=4. Sized by ptxas for sm_90 (Triton 3.9) so that no kernel
# spills: with one 32 x 64 tile for all (16 pairs per thread) the gradient kernels used 255
# registers and spilled 0.1-0.9 KB in float32 and 5-10.7 KB in float64, a float64 value taking two
# registers. The row-reducing grad1 kernel needs the smaller tile. tests/test_box_iou_ptx.py checks.
_TILES = {
    "forward": {False: (32, 64), True: (16, 32)},
    "grad1": {False: (16, 32), True: (16, 16)},
    "grad2": {False: (32, 32), True: (16, 16)},
}


def _tiles(kernel: str, dtype: torch.dtype):
    return _TILES[kernel][dtype == torch.float64]


def _programs(count: int, what: str) -> int:
    if count > _MAX_PROGRAMS:
        raise ValueError(f"{what} needs {count} Triton programs, more than a CUDA grid holds ({_MAX_PROGRAMS})")
    return count


def _grid(kernel: str, B: int, N: int, M: int, dtype: torch.dtype):
    """The one-dimensional grid of a pairwise kernel: (batch x row tiles x column tiles,) for the
    forward, (batch x row tiles,) for grad1, (batch x column tiles,) for grad2."""
    block_n, block_m = _tiles(kernel, dtype)
    tiles = {"forward": triton.cdiv(N, block_n) * triton.cdiv(M, block_m), "grad1": triton.cdiv(N, block_n),
             "grad2": triton.cdiv(M, block_m)}[kernel]
    return (_programs(B * tiles, f"boxes1 and boxes2 ({B} x {N} x {M} pairs)"),)


def _on_device(t: torch.Tensor):
    """Makes t's GPU the current one for the launch (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@triton.jit
def _pairwise_kernel(b1_ptr, b2_ptr, out_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                     FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid % tiles_m
    pid_n = (pid // tiles_m) % tiles_n
    b = pid // (tiles_m * tiles_n)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    cmask = cols < M
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    v = iou(ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
            bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], 0.0, GENERALIZED)
    offs = (b * N + rows[:, None]) * M + cols[None, :]
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _pairwise_grad1_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                           FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grad of boxes1: each program owns BLOCK_N rows of one batch item and sweeps all columns."""
    pid = tl.program_id(0).to(tl.int64)
    tiles_n = tl.cdiv(N, BLOCK_N)
    b = pid // tiles_n
    rows = (pid % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    s0 = ax0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        cmask = cols < M
        bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None]) * M + cols[None, :], mask=mask, other=0.0)
        g = g.to(s0.dtype)
        gax0, gay0, gax1, gay1, _, _, _, _ = iou_grad(
            ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
            bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], g, 0.0, GENERALIZED)
        s0 += tl.sum(tl.where(mask, gax0, 0.0), axis=1)
        s1 += tl.sum(tl.where(mask, gay0, 0.0), axis=1)
        s2 += tl.sum(tl.where(mask, gax1, 0.0), axis=1)
        s3 += tl.sum(tl.where(mask, gay1, 0.0), axis=1)
    store_grad(g1_ptr, b * N + rows, rmask, s0, s1, s2, s3, CXCYWH)


@triton.jit
def _pairwise_grad2_kernel(g_ptr, b1_ptr, b2_ptr, g2_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                           FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grad of boxes2: each program owns BLOCK_M columns of one batch item and sweeps all rows."""
    pid = tl.program_id(0).to(tl.int64)
    tiles_m = tl.cdiv(M, BLOCK_M)
    b = pid // tiles_m
    cols = (pid % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    s0 = bx0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        rmask = rows < N
        ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None]) * M + cols[None, :], mask=mask, other=0.0)
        g = g.to(s0.dtype)
        _, _, _, _, gbx0, gby0, gbx1, gby1 = iou_grad(
            ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
            bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], g, 0.0, GENERALIZED)
        s0 += tl.sum(tl.where(mask, gbx0, 0.0), axis=0)
        s1 += tl.sum(tl.where(mask, gby0, 0.0), axis=0)
        s2 += tl.sum(tl.where(mask, gbx1, 0.0), axis=0)
        s3 += tl.sum(tl.where(mask, gby1, 0.0), axis=0)
    store_grad(g2_ptr, b * M + cols, cmask, s0, s1, s2, s3, CXCYWH)


@triton.jit
def _loss_kernel(b1_ptr, b2_ptr, out_ptr, K, eps, CXCYWH: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < K
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, idx, mask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = load_box(b2_ptr, idx, mask, CXCYWH, FP64)
    v = 1.0 - iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, eps, True)
    tl.store(out_ptr + idx, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _loss_backward_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, g2_ptr, K, eps, CXCYWH: tl.constexpr, FP64: tl.constexpr,
                          BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < K
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, idx, mask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = load_box(b2_ptr, idx, mask, CXCYWH, FP64)
    g = -tl.load(g_ptr + idx, mask=mask, other=0.0).to(ax0.dtype)  # loss = 1 - giou
    gax0, gay0, gax1, gay1, gbx0, gby0, gbx1, gby1 = iou_grad(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, g, eps, True)
    store_grad(g1_ptr, idx, mask, gax0, gay0, gax1, gay1, CXCYWH)
    store_grad(g2_ptr, idx, mask, gbx0, gby0, gbx1, gby1, CXCYWH)


def _batched(t):
    return (t.unsqueeze(0) if t.dim() == 2 else t).contiguous()


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, generalized: bool) -> torch.Tensor:
    shape = _box_checks.pairwise_shape(boxes1, boxes2, box_format)
    B, N, M = (1,) * (3 - len(shape)) + tuple(shape)
    out = boxes1.new_empty((B, N, M))
    if out.numel() > 0:
        b1, b2 = _batched(boxes1), _batched(boxes2)
        block_n, block_m = _tiles("forward", b1.dtype)
        with _on_device(b1):
            launch(_pairwise_kernel)[_grid("forward", B, N, M, b1.dtype)](
                b1, b2, out, N, M, CXCYWH=box_format == "cxcywh", GENERALIZED=generalized,
                FP64=b1.dtype == torch.float64, BLOCK_N=block_n, BLOCK_M=block_m)
    return out.view(shape)


def pairwise_iou_backward(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                          generalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _box_checks.pairwise_shape(boxes1, boxes2, box_format)
    _box_checks.check_grad(grad, shape, boxes1)
    B, N, M = (1,) * (3 - len(shape)) + tuple(shape)
    g1, g2 = torch.zeros_like(boxes1, memory_format=torch.contiguous_format), torch.zeros_like(
        boxes2, memory_format=torch.contiguous_format)
    if B > 0 and N > 0 and M > 0:
        b1, b2 = _batched(boxes1), _batched(boxes2)
        g = grad.to(b1.dtype).reshape(B, N, M).contiguous()
        meta = dict(CXCYWH=box_format == "cxcywh", GENERALIZED=generalized, FP64=b1.dtype == torch.float64)
        n1, m1 = _tiles("grad1", b1.dtype)
        n2, m2 = _tiles("grad2", b1.dtype)
        with _on_device(b1):
            launch(_pairwise_grad1_kernel)[_grid("grad1", B, N, M, b1.dtype)](
                g, b1, b2, g1, N, M, BLOCK_N=n1, BLOCK_M=m1, **meta)
            launch(_pairwise_grad2_kernel)[_grid("grad2", B, N, M, b1.dtype)](
                g, b1, b2, g2, N, M, BLOCK_N=n2, BLOCK_M=m2, **meta)
    return g1, g2


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, eps: float) -> torch.Tensor:
    _box_checks.check_loss_boxes(boxes1, boxes2, box_format, eps)
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    out = b1.new_empty(b1.shape[:-1], dtype=acc_dtype(b1.dtype))
    K = out.numel()
    if K > 0:
        grid = (_programs(triton.cdiv(K, _BLOCK_K), f"boxes1 and boxes2 ({K} pairs)"),)
        with _on_device(b1):
            launch(_loss_kernel)[grid](
                b1, b2, out, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64, BLOCK=_BLOCK_K)
    return out


def giou_loss_backward(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _box_checks.check_loss_boxes(boxes1, boxes2, box_format, eps)
    _box_checks.check_grad(grad, boxes1.shape[:-1], boxes1)
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    g = grad.to(acc_dtype(b1.dtype)).contiguous()
    g1, g2 = torch.empty_like(b1), torch.empty_like(b2)
    K = g.numel()
    if K > 0:
        grid = (_programs(triton.cdiv(K, _BLOCK_K), f"boxes1 and boxes2 ({K} pairs)"),)
        with _on_device(b1):
            launch(_loss_backward_kernel)[grid](
                g, b1, b2, g1, g2, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64,
                BLOCK=_BLOCK_K)
    return g1, g2
