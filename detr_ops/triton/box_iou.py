"""Triton kernels and launchers of the box-overlap ops; ``detr_ops/_registrations.py`` defines them
as ``torch.ops.detr_ops.{pairwise_iou,pairwise_iou_backward,giou_loss,giou_loss_backward}_triton``.

The math is box_math.py's (the rules of csrc/ops/common/box_iou.h). The pairwise forward computes
a [BLOCK_N, BLOCK_M] tile per program; the backward reduces each row (grad of boxes1) and each
column (grad of boxes2) inside one program, so no atomics are needed and the result is
deterministic. Half and bfloat16 compute in float32, float64 in float64.
"""
import torch
import triton
import triton.language as tl

from detr_ops._dtypes import acc_dtype
from detr_ops.triton._launch import launch
from detr_ops.triton.box_math import iou, iou_grad, load_box, store_grad

_BLOCK_N = 32
_BLOCK_M = 64
_BLOCK_K = 256


@triton.jit
def _pairwise_kernel(b1_ptr, b2_ptr, out_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                     FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    cmask = cols < M
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    v = iou(ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
             bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], 0.0, GENERALIZED)
    offs = (b * N + rows[:, None].to(tl.int64)) * M + cols[None, :]
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _pairwise_grad1_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                           FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grad of boxes1: each program owns BLOCK_N rows and sweeps all columns."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    s0 = ax0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        cmask = cols < M
        bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None].to(tl.int64)) * M + cols[None, :], mask=mask, other=0.0)
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
    """Grad of boxes2: each program owns BLOCK_M columns and sweeps all rows."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    bx0, by0, bx1, by1 = load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    s0 = bx0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        ax0, ay0, ax1, ay1 = load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None].to(tl.int64)) * M + cols[None, :], mask=mask, other=0.0)
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


def _check(boxes1, boxes2, box_format):
    if box_format not in ("xyxy", "cxcywh"):
        raise ValueError(f"box_format must be one of ('xyxy', 'cxcywh'), got {box_format!r}")
    if boxes1.dtype != boxes2.dtype or boxes1.device != boxes2.device:
        raise ValueError("boxes1 and boxes2 must have the same dtype and device")


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, generalized: bool) -> torch.Tensor:
    _check(boxes1, boxes2, box_format)
    b1, b2 = _batched(boxes1), _batched(boxes2)
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    out = b1.new_empty((B, N, M))
    if out.numel() > 0:
        grid = (triton.cdiv(N, _BLOCK_N), triton.cdiv(M, _BLOCK_M), B)
        launch(_pairwise_kernel)[grid](
            b1, b2, out, N, M, CXCYWH=box_format == "cxcywh", GENERALIZED=generalized,
            FP64=b1.dtype == torch.float64, BLOCK_N=_BLOCK_N, BLOCK_M=_BLOCK_M)
    return out.view(boxes1.shape[:-1] + boxes2.shape[-2:-1])


def pairwise_iou_backward(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                          generalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check(boxes1, boxes2, box_format)
    b1, b2 = _batched(boxes1), _batched(boxes2)
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    g = grad.to(b1.dtype).reshape(B, N, M).contiguous()
    g1, g2 = torch.zeros_like(b1), torch.zeros_like(b2)
    if B > 0 and N > 0 and M > 0:
        meta = dict(CXCYWH=box_format == "cxcywh", GENERALIZED=generalized, FP64=b1.dtype == torch.float64,
                    BLOCK_N=_BLOCK_N, BLOCK_M=_BLOCK_M)
        launch(_pairwise_grad1_kernel)[(triton.cdiv(N, _BLOCK_N), B)](g, b1, b2, g1, N, M, **meta)
        launch(_pairwise_grad2_kernel)[(triton.cdiv(M, _BLOCK_M), B)](g, b1, b2, g2, N, M, **meta)
    return g1.view(boxes1.shape), g2.view(boxes2.shape)


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, eps: float) -> torch.Tensor:
    _check(boxes1, boxes2, box_format)
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    out = b1.new_empty(b1.shape[:-1], dtype=acc_dtype(b1.dtype))
    K = out.numel()
    if K > 0:
        launch(_loss_kernel)[(triton.cdiv(K, _BLOCK_K),)](
            b1, b2, out, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64, BLOCK=_BLOCK_K)
    return out


def giou_loss_backward(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check(boxes1, boxes2, box_format)
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    g = grad.to(acc_dtype(b1.dtype)).contiguous()
    g1, g2 = torch.empty_like(b1), torch.empty_like(b2)
    K = g.numel()
    if K > 0:
        launch(_loss_backward_kernel)[(triton.cdiv(K, _BLOCK_K),)](
            g, b1, b2, g1, g2, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64, BLOCK=_BLOCK_K)
    return g1, g2
