"""Hugging Face transformers' Hungarian matchers, computed by the fused cost and the batched solver.

transformers' matchers (``HungarianMatcher``, ``DeformableDetrHungarianMatcher``,
``RTDetrHungarianMatcher``, ``LwDetrHungarianMatcher``) build a cross-image ``[B*Q, sum T]`` cost,
replace NaN and +-inf by the dtype's largest finite value (``torch.nan_to_num``: such a pair is
matched only when nothing else can be), copy it to the host and loop scipy per image. Here each
image's block comes from one ``detr_ops.matching_cost`` call, the same replacement is applied to
it, and ``detr_ops.batched_linear_sum_assignment(cost, None, num_targets)`` solves every image at
once without reading the padding columns; the result is transformers' list of
``(index_i, index_j)`` int64 CPU tensors, with scipy's exact indices.

What the fused path does not represent runs transformers' own ``forward`` unchanged, so its
errors and results are transformers': dtypes other than float32/float64 (or mixed), malformed
``outputs``/``targets``, boxes that fail transformers' corner check (it raises ``ValueError``) or
are not finite, a zero-area prediction with a zero-area target in the batch (transformers' GIoU
is NaN there, detr_ops' finite),
labels outside ``[0, num_classes)`` (it raises ``IndexError``), a device without detr_ops kernels, and LW-DETR groups that do not divide the
queries.
"""
import inspect

import torch

from detr_ops.ops.linear_sum_assignment import batched_linear_sum_assignment, raise_for_status
from detr_ops.ops.matching_cost import matching_cost, pad_targets

_DTYPES = (torch.float32, torch.float64)
_DEVICES = ("cpu", "cuda")


def _box_checks(boxes):
    """``(ok, zero_area)`` for ``[n, 4]`` cxcywh boxes, with transformers' arithmetic
    (``center_to_corners_format``, then ``box_area``): ``ok`` is its corner check in
    ``generalized_box_iou`` (``x1 >= x0`` and ``y1 >= y0``; NaN fails it), and finite coordinates;
    ``zero_area`` whether some box has area 0."""
    cx, cy, w, h = boxes.unbind(-1)
    x0, y0, x1, y1 = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
    ok = ((x1 >= x0) & (y1 >= y0)).all() & boxes.isfinite().all()
    return ok, ((x1 - x0) * (y1 - y0) == 0).any()


def _inputs(outputs, targets):
    """The fused path's inputs, or None when it cannot represent this call. One host sync (the
    value checks), which transformers' own matcher makes as well (its corner check and ``.cpu()``)."""
    if not isinstance(outputs, dict) or not isinstance(targets, (list, tuple)):
        return None
    logits, boxes = outputs.get("logits"), outputs.get("pred_boxes")
    if not isinstance(logits, torch.Tensor) or not isinstance(boxes, torch.Tensor) or logits.dim() != 3:
        return None
    B, Q, K = logits.shape
    if boxes.shape != (B, Q, 4) or logits.dtype not in _DTYPES or boxes.dtype != logits.dtype:
        return None
    if logits.device.type not in _DEVICES or boxes.device != logits.device or len(targets) != B or K == 0:
        return None
    labels, tgt_boxes = [], []
    for t in targets:
        if not isinstance(t, dict):
            return None
        lab, box = t.get("class_labels"), t.get("boxes")
        if not isinstance(lab, torch.Tensor) or not isinstance(box, torch.Tensor):
            return None
        if lab.dim() != 1 or lab.dtype.is_floating_point or lab.dtype == torch.bool or box.shape != (lab.shape[0], 4):
            return None
        if box.dtype != logits.dtype or box.device != logits.device or lab.device != logits.device:
            return None
        labels.append(lab)
        tgt_boxes.append(box)
    all_labels, all_boxes = torch.cat(labels), torch.cat(tgt_boxes)
    pred_ok, pred_zero = _box_checks(boxes.reshape(-1, 4))
    tgt_ok, tgt_zero = _box_checks(all_boxes)
    # A zero-area prediction against a zero-area target has union 0: transformers' GIoU is NaN
    # there (cost -> max), detr_ops' is finite by design; such a batch runs transformers' code.
    ok = torch.stack([pred_ok, tgt_ok, ((all_labels >= 0) & (all_labels < K)).all(), ~(pred_zero & tgt_zero)])
    if not bool(ok.all()):
        return None
    padded = pad_targets([{"labels": lab, "boxes": box} for lab, box in zip(labels, tgt_boxes)], device=logits.device)
    return logits, boxes, padded


def replaces_nonfinite(original) -> bool:
    """Whether a transformers matcher ``forward`` replaces NaN/inf costs (``torch.nan_to_num``, as
    the pinned version does) or, like older versions, hands them to scipy, which raises."""
    try:
        return "nan_to_num" in inspect.getsource(original)
    except (OSError, TypeError):
        return True


def _match(logits, boxes, padded, weights, focal, alpha, gamma, groups, backend, replace_nonfinite=True):
    """The fused matcher: cost, transformers' NaN/inf replacement, batched solve, index lists."""
    labels, tgt_boxes, num = padded
    class_w, bbox_w, giou_w = weights
    cost = matching_cost(logits, boxes, labels, tgt_boxes, num, class_w, bbox_w, giou_w, focal, alpha, gamma,
                         backend=backend)
    if replace_nonfinite:
        # transformers: nan_to_num(cost, nan=max, posinf=max, neginf=max) on its float dtype. The
        # padding columns (+inf) become max as well; the solver never reads them (num_cols).
        big = torch.finfo(cost.dtype).max
        cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
    # else: NaN / -inf reach the solver, which reports scipy's "invalid numeric entries" below.
    B, Q, T = cost.shape
    if groups > 1:
        # Group DETR: each group of Q / G queries is matched to the targets on its own.
        cost = cost.reshape(B * groups, Q // groups, T)
        num = num.repeat_interleave(groups)
    col_for_row, status = batched_linear_sum_assignment(cost, None, num, check=False, backend=backend)
    host = torch.cat([col_for_row, status.to(col_for_row.dtype)[:, None]], dim=1).cpu()
    raise_for_status(host[:, -1])
    # A group's rows shifted by g * Q / G and concatenated group after group are the rows of the
    # whole [B, Q] matrix in ascending order: the lists transformers builds.
    col_for_row = host[:, :-1].reshape(B, Q)
    indices = []
    for cols in col_for_row:
        rows = (cols >= 0).nonzero().flatten()
        indices.append((rows, cols[rows]))
    return indices


class Adapters:
    """``forward`` replacements for each matcher class, bound to the original they fall back to."""

    def __init__(self, backend="auto"):
        self.backend = backend

    def _forward(self, original, class_cost):
        """The replacement of a ``forward(matcher, outputs, targets)``: ``class_cost(matcher)`` gives
        the cost's ``(focal, alpha, gamma)``; anything the fused path does not take goes to
        ``original``."""
        backend, replace = self.backend, replaces_nonfinite(original)

        @torch.no_grad()
        def forward(matcher, outputs, targets):
            inputs = _inputs(outputs, targets)
            if inputs is None:
                return original(matcher, outputs, targets)
            weights = (matcher.class_cost, matcher.bbox_cost, matcher.giou_cost)
            return _match(*inputs, weights, *class_cost(matcher), 1, backend, replace)

        forward.__wrapped__ = original
        return forward

    def detr(self, original):
        """``HungarianMatcher`` (DETR, its segmentation head, YOLOS, Table Transformer, ...):
        softmax class cost."""
        return self._forward(original, lambda matcher: (False, 0.25, 2.0))

    def deformable_detr(self, original):
        """``DeformableDetrHungarianMatcher`` (Deformable DETR, Conditional DETR, DAB-DETR): focal
        class cost with transformers' fixed alpha = 0.25, gamma = 2."""
        return self._forward(original, lambda matcher: (True, 0.25, 2.0))

    def rt_detr(self, original):
        """``RTDetrHungarianMatcher`` (RT-DETR, RT-DETRv2, D-FINE, DEIMv2): focal with the config's
        ``matcher_alpha`` / ``matcher_gamma``, or softmax when ``use_focal_loss`` is off."""
        return self._forward(
            original, lambda matcher: (bool(matcher.use_focal_loss), float(matcher.alpha), float(matcher.gamma)))

    def lw_detr(self, original):
        """``LwDetrHungarianMatcher`` (LW-DETR, RF-DETR detection): Deformable DETR's focal cost,
        ``group_detr`` groups of queries matched separately. transformers computes its L1 cost in
        float32 whatever the input dtype, so only float32 inputs take the fused path."""
        backend, replace = self.backend, replaces_nonfinite(original)

        @torch.no_grad()
        def forward(matcher, outputs, targets, group_detr):
            inputs = _inputs(outputs, targets)
            groups = group_detr if isinstance(group_detr, int) and not isinstance(group_detr, bool) else 0
            if inputs is None or inputs[0].dtype != torch.float32 or groups < 1 or inputs[0].shape[1] % groups:
                return original(matcher, outputs, targets, group_detr)
            weights = (matcher.class_cost, matcher.bbox_cost, matcher.giou_cost)
            return _match(*inputs, weights, True, 0.25, 2.0, groups, backend, replace)

        forward.__wrapped__ = original
        return forward
