"""Triton kernel and launcher of the fused matching cost; ``detr_ops/_registrations.py`` defines it as
``torch.ops.detr_ops.matching_cost_triton``.

One program per block of BLOCK_Q queries of one image and BLOCK_T of its targets. The softmax
statistics (DETR's class cost) are reduced over K in blocks of BLOCK_K classes, max first, then the
sum of exp(logit - max), so any number of classes compiles (K = 0 included) without a K-wide tile in
registers; the other class costs gather only the target labels' logits. Same formulas and operation
order as csrc/ops/common/matching_cost.h, with two differences of rounding only: x ** y is
exp(y * log(x)), and log1p(z) is log(1 + z) (Triton has no log1p in every version we support).
"""
import contextlib

import torch
import triton
import triton.language as tl

from detr_ops._dtypes import acc_dtype
# the schema's class_cost names, in the order of csrc/ops/common/matching_cost.h's ClassCost
from detr_ops._registrations import MATCHING_CLASS_COSTS as CLASS_COSTS
from detr_ops.triton._launch import launch
from detr_ops.triton.box_math import cxcywh_to_corners, iou

_BLOCK_Q = 16
_BLOCK_T = 32
# Classes per block of the softmax reductions. In float64, 128 made ptxas (Triton 3.6, sm_90) spill
# 1.5 KB per thread and 64 still 112 B (255 registers: the [BLOCK_Q, BLOCK_K] tile of doubles beside
# the box tile); 32 does not spill (docs/triton_resources.md).
_MAX_BLOCK_K = 128
_MAX_BLOCK_K_FP64 = 32


@triton.jit
def _pow(x, y):
    """x ** y for x >= 0 (or NaN) as torch.pow gives it at the ends: 0 ** 0 = 1, 0 ** y = 0,
    x ** 1 = x, NaN ** y = NaN for y != 0."""
    safe = tl.where(x > 0, x, 1.0)
    p = tl.exp(y * tl.log(safe))
    p = tl.where(x > 0, p, tl.where(y == 0, 1.0, 0.0))
    p = tl.where((x != x) & (y != 0), x, p)
    return tl.where(y == 1.0, x, p)


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _matching_cost_kernel(logits_ptr, boxes_ptr, labels_ptr, tboxes_ptr, counts_ptr, out_ptr, Q, K, T,
                          wc, wb, wg, alpha, gamma, iou_power, CLASS_COST: tl.constexpr, BLOCK_Q: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    # axis 0 runs over (image, query block): grid axes 1 and 2 are limited to 65535 on CUDA
    q_blocks = tl.cdiv(Q, BLOCK_Q)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // q_blocks
    qs = (pid % q_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    qmask = qs < Q
    tmask = ts < T
    rows = b * Q + qs.to(tl.int64)
    n = tl.load(counts_ptr + b)
    labels = tl.load(labels_ptr + b * T + ts, mask=tmask, other=0)
    label_ok = (labels >= 0) & (labels < K)
    safe_labels = tl.where(label_ok, labels, 0)
    both = qmask[:, None] & tmask[None, :]
    picked = tl.load(logits_ptr + rows[:, None] * K + safe_labels[None, :], mask=both & label_ok[None, :], other=0.0)
    pcx = tl.load(boxes_ptr + rows * 4 + 0, mask=qmask, other=0.0)
    pcy = tl.load(boxes_ptr + rows * 4 + 1, mask=qmask, other=0.0)
    pw = tl.load(boxes_ptr + rows * 4 + 2, mask=qmask, other=0.0)
    ph = tl.load(boxes_ptr + rows * 4 + 3, mask=qmask, other=0.0)
    tidx = b * T + ts
    tcx = tl.load(tboxes_ptr + tidx * 4 + 0, mask=tmask, other=0.0)
    tcy = tl.load(tboxes_ptr + tidx * 4 + 1, mask=tmask, other=0.0)
    tw = tl.load(tboxes_ptr + tidx * 4 + 2, mask=tmask, other=0.0)
    th = tl.load(tboxes_ptr + tidx * 4 + 3, mask=tmask, other=0.0)
    l1 = (tl.abs(pcx[:, None] - tcx[None, :]) + tl.abs(pcy[:, None] - tcy[None, :]) + tl.abs(pw[:, None] - tw[None, :])
          + tl.abs(ph[:, None] - th[None, :]))
    px0, py0, px1, py1 = cxcywh_to_corners(pcx, pcy, pw, ph)
    tx0, ty0, tx1, ty1 = cxcywh_to_corners(tcx, tcy, tw, th)
    giou = iou(px0[:, None], py0[:, None], px1[:, None], py1[:, None],
               tx0[None, :], ty0[None, :], tx1[None, :], ty1[None, :], 0.0, True)
    if CLASS_COST == 0:  # DETR: -softmax(logits)[label], the statistics reduced over K in blocks
        mx = tl.full((BLOCK_Q,), -float("inf"), picked.dtype)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            row = tl.load(logits_ptr + rows[:, None] * K + ks[None, :], mask=qmask[:, None] & (ks[None, :] < K),
                          other=-float("inf"))
            mx = tl.maximum(mx, tl.max(row, axis=1))
        mx = tl.where(qmask & (K > 0), mx, 0.0)  # masked rows (and K = 0) would give -inf - -inf
        total = tl.zeros((BLOCK_Q,), picked.dtype)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = qmask[:, None] & (ks[None, :] < K)
            row = tl.load(logits_ptr + rows[:, None] * K + ks[None, :], mask=kmask, other=0.0)
            total += tl.sum(tl.where(kmask, tl.exp(row - mx[:, None]), 0.0), axis=1)
        total = tl.where(total > 0, total, 1.0)
        class_term = -(tl.exp(picked - mx[:, None]) / total[:, None])
    elif CLASS_COST == 1:  # Deformable DETR's focal cost
        p = 1.0 / (1.0 + tl.exp(-picked))
        neg = (1.0 - alpha) * _pow(p, gamma) * -tl.log(1.0 - p + 1e-8)
        pos = alpha * _pow(1.0 - p, gamma) * -tl.log(p + 1e-8)
        class_term = pos - neg
    elif CLASS_COST == 2:  # RF-DETR's focal cost with logsigmoid
        p = 1.0 / (1.0 + tl.exp(-picked))
        neg = (1.0 - alpha) * _pow(p, gamma) * -_log_sigmoid(-picked)
        pos = alpha * _pow(1.0 - p, gamma) * -_log_sigmoid(picked)
        class_term = pos - neg
    else:  # DEIMv2's IoU-aware cost: -(sigmoid(logit) * IoU ** iou_power)
        p = 1.0 / (1.0 + tl.exp(-picked))
        plain = iou(px0[:, None], py0[:, None], px1[:, None], py1[:, None],
                    tx0[None, :], ty0[None, :], tx1[None, :], ty1[None, :], 0.0, False)
        class_term = -(p * _pow(plain, iou_power))
    cost = wb * l1 + wc * class_term + wg * -giou
    cost = tl.where(label_ok[None, :], cost, float("nan"))
    cost = tl.where(ts[None, :] < n, cost, float("inf"))
    cost = tl.where((n >= 0) & (n <= T), cost, float("nan"))  # a count the block cannot hold: NaN
    tl.store(out_ptr + rows[:, None] * T + ts[None, :], cost, mask=both)


def matching_cost(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, tgt_labels: torch.Tensor, tgt_boxes: torch.Tensor,
                  num_targets: torch.Tensor, cost_class: float, cost_bbox: float, cost_giou: float, class_cost: str,
                  focal_alpha: float, focal_gamma: float, iou_power: float) -> torch.Tensor:
    if class_cost not in CLASS_COSTS:
        raise ValueError(f"class_cost must be one of {CLASS_COSTS}, got {class_cost!r}")
    acc = acc_dtype(pred_logits.dtype)
    logits = pred_logits.to(acc).contiguous()
    boxes = pred_boxes.to(acc).contiguous()
    tboxes = tgt_boxes.to(acc).contiguous()
    B, Q, K = logits.shape
    T = tgt_labels.shape[1]
    out = logits.new_empty((B, Q, T))
    if out.numel() > 0:
        grid = (B * triton.cdiv(Q, _BLOCK_Q), triton.cdiv(T, _BLOCK_T))
        max_block_k = _MAX_BLOCK_K_FP64 if acc == torch.float64 else _MAX_BLOCK_K
        block_k = min(max_block_k, max(16, triton.next_power_of_2(max(K, 1))))
        # the inputs may sit on a GPU that is not the current one
        with torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext():
            launch(_matching_cost_kernel)[grid](
                logits, boxes, tgt_labels.contiguous(), tboxes, num_targets.contiguous(), out, Q, K, T,
                cost_class, cost_bbox, cost_giou, focal_alpha, focal_gamma, iou_power,
                CLASS_COST=CLASS_COSTS.index(class_cost), BLOCK_Q=_BLOCK_Q, BLOCK_T=_BLOCK_T, BLOCK_K=block_k)
    return out

