"""IoU / GIoU of boxes as plain elementwise arithmetic, for export.

Same schemas as ``detr_ops::pairwise_iou(boxes1, boxes2, box_format, generalized)`` and
``detr_ops::giou_loss(boxes1, boxes2, box_format, eps)``, and the same formula as the kernels
(``csrc/ops/common/box_iou.h``), guards included: every clamp, min and max is the same select
the kernels use (``a > b ? a : b``), so degenerate and NaN boxes give the kernels' values, not
just valid ones. float16 / bfloat16 are computed in float32; the pairwise result has the boxes'
dtype, the loss is float32 (float64 for float64 boxes), as the ops return.
"""
import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _corners(boxes, box_format: str):
    a, b, c, d = boxes.unbind(-1)
    if box_format == "cxcywh":
        hw, hh = 0.5 * c, 0.5 * d
        return a - hw, b - hh, a + hw, b + hh
    if box_format != "xyxy":
        raise ValueError(f"box_format must be 'xyxy' or 'cxcywh', got {box_format!r}")
    return a, b, c, d


def _max(a, b):
    return torch.where(a > b, a, b)


def _min(a, b):
    return torch.where(a < b, a, b)


def _relu(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


def _safe_ratio(num, den):
    """``num / den`` where ``den > 0``, else 0; the division never sees a zero denominator."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num))


def iou_value(a, b, eps, generalized: bool):
    """IoU (or GIoU) of corner tuples ``a``, ``b`` that broadcast against each other."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    area_a = _relu(ax1 - ax0) * _relu(ay1 - ay0)
    area_b = _relu(bx1 - bx0) * _relu(by1 - by0)
    iw = _min(ax1, bx1) - _max(ax0, bx0)
    ih = _min(ay1, by1) - _max(ay0, by0)
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, torch.zeros_like(iw))
    union = area_a + area_b - inter
    iou = _safe_ratio(inter, union + eps)
    if not generalized:
        return iou
    cw = _relu(_max(ax1, bx1) - _min(ax0, bx0))
    ch = _relu(_max(ay1, by1) - _min(ay0, by0))
    area_c = cw * ch
    return iou - _safe_ratio(area_c - union, area_c + eps)


def pairwise_iou(boxes1, boxes2, box_format: str, generalized: bool):
    """``[N, 4] x [M, 4] -> [N, M]`` or ``[B, N, 4] x [B, M, 4] -> [B, N, M]``."""
    ct = _compute_dtype(torch.promote_types(boxes1.dtype, boxes2.dtype))
    a = _corners(boxes1.to(ct).unsqueeze(-2), box_format)  # [..., N, 1]
    b = _corners(boxes2.to(ct).unsqueeze(-3), box_format)  # [..., 1, M]
    return iou_value(a, b, 0.0, generalized).to(boxes1.dtype)


def giou_loss(boxes1, boxes2, box_format: str, eps: float):
    """Elementwise ``1 - GIoU`` of matching boxes ``[..., 4]`` -> ``[...]``."""
    ct = _compute_dtype(torch.promote_types(boxes1.dtype, boxes2.dtype))
    a = _corners(boxes1.to(ct), box_format)
    b = _corners(boxes2.to(ct), box_format)
    return 1 - iou_value(a, b, float(eps), True)
