"""Triton kernel and launcher of the fused DETR matching cost; ``detr_ops/_registrations.py`` defines
it as ``torch.ops.detr_ops.matching_cost_triton``.

One program per block of BLOCK_Q queries of one image and BLOCK_T of its targets: the block's
logits rows are loaded once for the softmax statistics, then the target labels' logits gathered.
Same formulas and operation order as csrc/ops/common/matching_cost.h.
"""
import torch
import triton
import triton.language as tl

from detr_ops._dtypes import acc_dtype
from detr_ops.triton._launch import launch
from detr_ops.triton.box_math import cxcywh_to_corners, iou

_BLOCK_Q = 16
_BLOCK_T = 32


@triton.jit
def _matching_cost_kernel(logits_ptr, boxes_ptr, labels_ptr, tboxes_ptr, counts_ptr, out_ptr, Q, K, T,
                          wc, wb, wg, alpha, gamma, FOCAL: tl.constexpr, BLOCK_Q: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    qs = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    qmask = qs < Q
    tmask = ts < T
    rows = b * Q + qs.to(tl.int64)
    n = tl.load(counts_ptr + b)
    n = tl.minimum(tl.maximum(n, 0), T)
    labels = tl.load(labels_ptr + b * T + ts, mask=tmask, other=0)
    label_ok = (labels >= 0) & (labels < K)
    safe_labels = tl.where(label_ok, labels, 0)
    both = qmask[:, None] & tmask[None, :]
    picked = tl.load(logits_ptr + rows[:, None] * K + safe_labels[None, :], mask=both, other=0.0)
    if FOCAL:
        p = 1.0 / (1.0 + tl.exp(-picked))
        neg = (1.0 - alpha) * tl.exp(gamma * tl.log(p)) * -tl.log(1.0 - p + 1e-8)
        pos = alpha * tl.exp(gamma * tl.log(1.0 - p)) * -tl.log(p + 1e-8)
        class_term = pos - neg
    else:
        ks = tl.arange(0, BLOCK_K)
        row = tl.load(logits_ptr + rows[:, None] * K + ks[None, :], mask=qmask[:, None] & (ks[None, :] < K),
                      other=-float("inf"))
        mx = tl.where(qmask, tl.max(row, axis=1), 0.0)  # masked rows are all -inf
        total = tl.sum(tl.where(ks[None, :] < K, tl.exp(row - mx[:, None]), 0.0), axis=1)
        total = tl.where(qmask, total, 1.0)
        class_term = -(tl.exp(picked - mx[:, None]) / total[:, None])
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
    cost = wb * l1 + wc * class_term + wg * -giou
    cost = tl.where(label_ok[None, :], cost, float("nan"))
    cost = tl.where(ts[None, :] < n, cost, float("inf"))
    tl.store(out_ptr + rows[:, None] * T + ts[None, :], cost, mask=both)


def matching_cost(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, tgt_labels: torch.Tensor, tgt_boxes: torch.Tensor,
                  num_targets: torch.Tensor, cost_class: float, cost_bbox: float, cost_giou: float, focal: bool,
                  focal_alpha: float, focal_gamma: float) -> torch.Tensor:
    acc = acc_dtype(pred_logits.dtype)
    logits = pred_logits.to(acc).contiguous()
    boxes = pred_boxes.to(acc).contiguous()
    tboxes = tgt_boxes.to(acc).contiguous()
    B, Q, K = logits.shape
    T = tgt_labels.shape[1]
    out = logits.new_empty((B, Q, T))
    if out.numel() > 0:
        grid = (triton.cdiv(Q, _BLOCK_Q), triton.cdiv(T, _BLOCK_T), B)
        launch(_matching_cost_kernel)[grid](
            logits, boxes, tgt_labels.contiguous(), tboxes, num_targets.contiguous(), out, Q, K, T,
            cost_class, cost_bbox, cost_giou, focal_alpha, focal_gamma, FOCAL=focal, BLOCK_Q=_BLOCK_Q,
            BLOCK_T=_BLOCK_T, BLOCK_K=triton.next_power_of_2(K))
    return out

