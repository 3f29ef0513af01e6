"""Triton kernels of the box-overlap ops, registered as ``torch.ops.detr_ops.*_triton``.

Same math, guards and tie rules as csrc/ops/common/box_iou.h (see that header's comment): the
pairwise forward computes a [BLOCK_N, BLOCK_M] tile per program; the backward reduces each row
(grad of boxes1) and each column (grad of boxes2) inside one program, so no atomics are needed and
the result is deterministic. Half and bfloat16 compute in float32, float64 in float64.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from detr_ops.ops import box_iou as _box_ops

_BLOCK_N = 32
_BLOCK_M = 64
_BLOCK_K = 256


@triton.jit
def _load_box(ptr, idx, mask, CXCYWH: tl.constexpr, FP64: tl.constexpr):
    a = tl.load(ptr + idx * 4 + 0, mask=mask, other=0.0)
    b = tl.load(ptr + idx * 4 + 1, mask=mask, other=0.0)
    c = tl.load(ptr + idx * 4 + 2, mask=mask, other=0.0)
    d = tl.load(ptr + idx * 4 + 3, mask=mask, other=0.0)
    if FP64:
        a, b, c, d = a.to(tl.float64), b.to(tl.float64), c.to(tl.float64), d.to(tl.float64)
    else:
        a, b, c, d = a.to(tl.float32), b.to(tl.float32), c.to(tl.float32), d.to(tl.float32)
    if CXCYWH:
        return a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    return a, b, c, d


@triton.jit
def _store_grad(ptr, idx, mask, g0, g1, g2, g3, CXCYWH: tl.constexpr):
    """Stores a corner gradient, converted to the gradient of the stored format."""
    if CXCYWH:
        g0, g1, g2, g3 = g0 + g2, g1 + g3, 0.5 * (g2 - g0), 0.5 * (g3 - g1)
    ty = ptr.dtype.element_ty
    if ty == tl.float16:  # saturate instead of overflowing to inf (box_iou.h: saturate_for_half)
        g0, g1 = tl.clamp(g0, -65504.0, 65504.0), tl.clamp(g1, -65504.0, 65504.0)
        g2, g3 = tl.clamp(g2, -65504.0, 65504.0), tl.clamp(g3, -65504.0, 65504.0)
    tl.store(ptr + idx * 4 + 0, g0.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 1, g1.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 2, g2.to(ty), mask=mask)
    tl.store(ptr + idx * 4 + 3, g3.to(ty), mask=mask)


@triton.jit
def _relu(x):
    return tl.where(x > 0, x, 0.0)


@triton.jit
def _drelu(x):
    return tl.where(x >= 0, 1.0, 0.0)


@triton.jit
def _iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, eps, GENERALIZED: tl.constexpr):
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    inter = tl.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    uni = _relu(ax1 - ax0) * _relu(ay1 - ay0) + _relu(bx1 - bx0) * _relu(by1 - by0) - inter
    du = uni + eps
    iou = tl.where(du > 0, inter / tl.where(du > 0, du, 1.0), 0.0)
    if GENERALIZED:
        cw = _relu(tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0))
        ch = _relu(tl.maximum(ay1, by1) - tl.minimum(ay0, by0))
        area_c = cw * ch
        dc = area_c + eps
        iou = iou - tl.where(dc > 0, (area_c - uni) / tl.where(dc > 0, dc, 1.0), 0.0)
    return iou


@triton.jit
def _dmax(a, b):
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _dmin(a, b):
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _iou_grad(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, g, eps, GENERALIZED: tl.constexpr):
    """g * d(iou)/d(corners of a, corners of b), the same rules as box_iou.h's iou_grad."""
    aw = _relu(ax1 - ax0)
    ah = _relu(ay1 - ay0)
    bw = _relu(bx1 - bx0)
    bh = _relu(by1 - by0)
    iw = tl.minimum(ax1, bx1) - tl.maximum(ax0, bx0)
    ih = tl.minimum(ay1, by1) - tl.maximum(ay0, by0)
    overlap = (iw > 0) & (ih > 0)
    inter = tl.where(overlap, iw * ih, 0.0)
    uni = aw * ah + bw * bh - inter
    du = uni + eps
    safe_du = tl.where(du > 0, du, 1.0)
    g_inter = tl.where(du > 0, g / safe_du, 0.0)
    g_uni = tl.where(du > 0, -g * inter / (safe_du * safe_du), 0.0)
    zero = g * 0.0
    gax0, gay0, gax1, gay1 = zero, zero, zero, zero
    gbx0, gby0, gbx1, gby1 = zero, zero, zero, zero
    if GENERALIZED:
        raw_cw = tl.maximum(ax1, bx1) - tl.minimum(ax0, bx0)
        raw_ch = tl.maximum(ay1, by1) - tl.minimum(ay0, by0)
        cw = _relu(raw_cw)
        ch = _relu(raw_ch)
        dc = cw * ch + eps
        safe_dc = tl.where(dc > 0, dc, 1.0)
        g_area_c = tl.where(dc > 0, -g * du / (safe_dc * safe_dc), 0.0)
        g_uni += tl.where(dc > 0, g / safe_dc, 0.0)
        g_cw = g_area_c * ch * _drelu(raw_cw)
        g_ch = g_area_c * cw * _drelu(raw_ch)
        gax1 += g_cw * _dmax(ax1, bx1)
        gbx1 += g_cw * _dmax(bx1, ax1)
        gax0 -= g_cw * _dmin(ax0, bx0)
        gbx0 -= g_cw * _dmin(bx0, ax0)
        gay1 += g_ch * _dmax(ay1, by1)
        gby1 += g_ch * _dmax(by1, ay1)
        gay0 -= g_ch * _dmin(ay0, by0)
        gby0 -= g_ch * _dmin(by0, ay0)
    g_inter -= g_uni
    g_aw = g_uni * ah * _drelu(ax1 - ax0)
    g_ah = g_uni * aw * _drelu(ay1 - ay0)
    g_bw = g_uni * bh * _drelu(bx1 - bx0)
    g_bh = g_uni * bw * _drelu(by1 - by0)
    gax1 += g_aw
    gax0 -= g_aw
    gay1 += g_ah
    gay0 -= g_ah
    gbx1 += g_bw
    gbx0 -= g_bw
    gby1 += g_bh
    gby0 -= g_bh
    g_iw = tl.where(overlap, g_inter * ih, 0.0)
    g_ih = tl.where(overlap, g_inter * iw, 0.0)
    gax1 += g_iw * _dmin(ax1, bx1)
    gbx1 += g_iw * _dmin(bx1, ax1)
    gax0 -= g_iw * _dmax(ax0, bx0)
    gbx0 -= g_iw * _dmax(bx0, ax0)
    gay1 += g_ih * _dmin(ay1, by1)
    gby1 += g_ih * _dmin(by1, ay1)
    gay0 -= g_ih * _dmax(ay0, by0)
    gby0 -= g_ih * _dmax(by0, ay0)
    return gax0, gay0, gax1, gay1, gbx0, gby0, gbx1, gby1


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
    ax0, ay0, ax1, ay1 = _load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = _load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    v = _iou(ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
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
    ax0, ay0, ax1, ay1 = _load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
    s0 = ax0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        cmask = cols < M
        bx0, by0, bx1, by1 = _load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None].to(tl.int64)) * M + cols[None, :], mask=mask, other=0.0)
        g = g.to(s0.dtype)
        gax0, gay0, gax1, gay1, _, _, _, _ = _iou_grad(
            ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
            bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], g, 0.0, GENERALIZED)
        s0 += tl.sum(tl.where(mask, gax0, 0.0), axis=1)
        s1 += tl.sum(tl.where(mask, gay0, 0.0), axis=1)
        s2 += tl.sum(tl.where(mask, gax1, 0.0), axis=1)
        s3 += tl.sum(tl.where(mask, gay1, 0.0), axis=1)
    _store_grad(g1_ptr, b * N + rows, rmask, s0, s1, s2, s3, CXCYWH)


@triton.jit
def _pairwise_grad2_kernel(g_ptr, b1_ptr, b2_ptr, g2_ptr, N, M, CXCYWH: tl.constexpr, GENERALIZED: tl.constexpr,
                           FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grad of boxes2: each program owns BLOCK_M columns and sweeps all rows."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cols < M
    bx0, by0, bx1, by1 = _load_box(b2_ptr, b * M + cols, cmask, CXCYWH, FP64)
    s0 = bx0 * 0.0
    s1, s2, s3 = s0, s0, s0
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        ax0, ay0, ax1, ay1 = _load_box(b1_ptr, b * N + rows, rmask, CXCYWH, FP64)
        mask = rmask[:, None] & cmask[None, :]
        g = tl.load(g_ptr + (b * N + rows[:, None].to(tl.int64)) * M + cols[None, :], mask=mask, other=0.0)
        g = g.to(s0.dtype)
        _, _, _, _, gbx0, gby0, gbx1, gby1 = _iou_grad(
            ax0[:, None], ay0[:, None], ax1[:, None], ay1[:, None],
            bx0[None, :], by0[None, :], bx1[None, :], by1[None, :], g, 0.0, GENERALIZED)
        s0 += tl.sum(tl.where(mask, gbx0, 0.0), axis=0)
        s1 += tl.sum(tl.where(mask, gby0, 0.0), axis=0)
        s2 += tl.sum(tl.where(mask, gbx1, 0.0), axis=0)
        s3 += tl.sum(tl.where(mask, gby1, 0.0), axis=0)
    _store_grad(g2_ptr, b * M + cols, cmask, s0, s1, s2, s3, CXCYWH)


@triton.jit
def _loss_kernel(b1_ptr, b2_ptr, out_ptr, K, eps, CXCYWH: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < K
    ax0, ay0, ax1, ay1 = _load_box(b1_ptr, idx, mask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = _load_box(b2_ptr, idx, mask, CXCYWH, FP64)
    v = 1.0 - _iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, eps, True)
    tl.store(out_ptr + idx, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _loss_backward_kernel(g_ptr, b1_ptr, b2_ptr, g1_ptr, g2_ptr, K, eps, CXCYWH: tl.constexpr, FP64: tl.constexpr,
                          BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < K
    ax0, ay0, ax1, ay1 = _load_box(b1_ptr, idx, mask, CXCYWH, FP64)
    bx0, by0, bx1, by1 = _load_box(b2_ptr, idx, mask, CXCYWH, FP64)
    g = -tl.load(g_ptr + idx, mask=mask, other=0.0).to(ax0.dtype)  # loss = 1 - giou
    gax0, gay0, gax1, gay1, gbx0, gby0, gbx1, gby1 = _iou_grad(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1, g, eps, True)
    _store_grad(g1_ptr, idx, mask, gax0, gay0, gax1, gay1, CXCYWH)
    _store_grad(g2_ptr, idx, mask, gbx0, gby0, gbx1, gby1, CXCYWH)


def _batched(t):
    return (t.unsqueeze(0) if t.dim() == 2 else t).contiguous()


def _check_pairwise(boxes1, boxes2, box_format):
    _box_ops._checks.one_of(box_format, _box_ops.BOX_FORMATS, "box_format")
    if boxes1.dtype != boxes2.dtype or boxes1.device != boxes2.device:
        raise ValueError("boxes1 and boxes2 must have the same dtype and device")


@triton_op("detr_ops::pairwise_iou_triton", mutates_args=())
def pairwise_iou_triton(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, generalized: bool) -> torch.Tensor:
    _check_pairwise(boxes1, boxes2, box_format)
    b1, b2 = _batched(boxes1), _batched(boxes2)
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    out = b1.new_empty((B, N, M))
    if out.numel() > 0:
        grid = (triton.cdiv(N, _BLOCK_N), triton.cdiv(M, _BLOCK_M), B)
        wrap_triton(_pairwise_kernel)[grid](
            b1, b2, out, N, M, CXCYWH=box_format == "cxcywh", GENERALIZED=generalized,
            FP64=b1.dtype == torch.float64, BLOCK_N=_BLOCK_N, BLOCK_M=_BLOCK_M)
    return out.view(boxes1.shape[:-1] + boxes2.shape[-2:-1])


@triton_op("detr_ops::pairwise_iou_backward_triton", mutates_args=())
def pairwise_iou_backward_triton(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                                 generalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pairwise(boxes1, boxes2, box_format)
    b1, b2 = _batched(boxes1), _batched(boxes2)
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    g = grad.to(b1.dtype).reshape(B, N, M).contiguous()
    g1, g2 = torch.zeros_like(b1), torch.zeros_like(b2)
    if B > 0 and N > 0 and M > 0:
        meta = dict(CXCYWH=box_format == "cxcywh", GENERALIZED=generalized, FP64=b1.dtype == torch.float64,
                    BLOCK_N=_BLOCK_N, BLOCK_M=_BLOCK_M)
        wrap_triton(_pairwise_grad1_kernel)[(triton.cdiv(N, _BLOCK_N), B)](g, b1, b2, g1, N, M, **meta)
        wrap_triton(_pairwise_grad2_kernel)[(triton.cdiv(M, _BLOCK_M), B)](g, b1, b2, g2, N, M, **meta)
    return g1.view(boxes1.shape), g2.view(boxes2.shape)


@triton_op("detr_ops::giou_loss_triton", mutates_args=())
def giou_loss_triton(boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str, eps: float) -> torch.Tensor:
    _box_ops._checks.one_of(box_format, _box_ops.BOX_FORMATS, "box_format")
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    out = b1.new_empty(b1.shape[:-1], dtype=_box_ops._loss_dtype(b1.dtype))
    K = out.numel()
    if K > 0:
        wrap_triton(_loss_kernel)[(triton.cdiv(K, _BLOCK_K),)](
            b1, b2, out, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64, BLOCK=_BLOCK_K)
    return out


@triton_op("detr_ops::giou_loss_backward_triton", mutates_args=())
def giou_loss_backward_triton(grad: torch.Tensor, boxes1: torch.Tensor, boxes2: torch.Tensor, box_format: str,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    b1, b2 = boxes1.contiguous(), boxes2.contiguous()
    g = grad.to(_box_ops._loss_dtype(b1.dtype)).contiguous()
    g1, g2 = torch.empty_like(b1), torch.empty_like(b2)
    K = g.numel()
    if K > 0:
        wrap_triton(_loss_backward_kernel)[(triton.cdiv(K, _BLOCK_K),)](
            g, b1, b2, g1, g2, K, eps, CXCYWH=box_format == "cxcywh", FP64=b1.dtype == torch.float64, BLOCK=_BLOCK_K)
    return g1, g2


_box_ops.register("_triton", fake=True)
