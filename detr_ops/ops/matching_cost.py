"""The whole DETR-family matching cost in one pass: ``torch.ops.detr_ops.matching_cost``.

DETR's matcher builds a cross-image ``[B*Q, sum T]`` matrix (softmax, cdist, GIoU, each a separate
pass) and throws away every block that pairs a query with another image's targets. The fused op
computes only the per-image blocks, ``[B, Q, T]`` over padded targets, in one kernel; it is not
differentiable (matching runs under ``torch.no_grad``).
"""
import math
import numbers
from collections.abc import Mapping

import torch
from torch.nn.utils.rnn import pad_sequence

from detr_ops import _backend, _extension
from detr_ops._registrations import MATCHING_CLASS_COSTS
from detr_ops.ops import _checks

CLASS_COSTS = MATCHING_CLASS_COSTS


def _host_to_device(values, device) -> torch.Tensor:
    """An int64 tensor of host values on ``device`` without a blocking copy: on a GPU it goes
    through pinned memory with ``non_blocking=True`` (``torch.tensor(list, device=cuda)`` copies
    from pageable memory, which waits for the device)."""
    host = torch.tensor(values, dtype=torch.int64)
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def pad_targets(targets, device=None):
    """DETR's list of ``{"labels": [T_i], "boxes": [T_i, 4]}`` -> ``(labels [B,T], boxes [B,T,4],
    num_targets [B])`` with T = max T_i (at least 1 column, so the shapes stay static-friendly).
    No host synchronisation: the sizes come from the tensors' shapes, and reach a GPU by a
    non-blocking copy."""
    if not isinstance(targets, (list, tuple)) or len(targets) == 0:
        raise ValueError(f"targets must be a non-empty list of dicts with 'labels' and 'boxes', got "
                         f"{type(targets).__name__ if not isinstance(targets, (list, tuple)) else 'an empty list'}")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping):
            raise ValueError(f"targets[{i}] must be a dict with 'labels' and 'boxes', got {type(t).__name__}")
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}] must have 'labels' and 'boxes'")
        labels, boxes = t["labels"], t["boxes"]
        _checks.tensor(labels, f"targets[{i}]['labels']")
        _checks.tensor(boxes, f"targets[{i}]['boxes']")
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{i}] must have labels [T] and boxes [T, 4], got {tuple(labels.shape)} and "
                f"{tuple(boxes.shape)}"
            )
        _checks.index_tensor(labels, f"targets[{i}]['labels']")
        _checks.floating(boxes, f"targets[{i}]['boxes']")
    dtypes = {t["boxes"].dtype for t in targets}
    if len(dtypes) > 1:
        raise ValueError(f"the boxes of all targets must have one dtype, got {sorted(map(str, dtypes))}")
    device = torch.device(device) if device is not None else targets[0]["boxes"].device
    labels = pad_sequence([t["labels"].to(device, torch.int64) for t in targets], batch_first=True)
    boxes = pad_sequence([t["boxes"].to(device) for t in targets], batch_first=True)
    if labels.shape[1] == 0:
        labels = labels.new_zeros(len(targets), 1)
        boxes = boxes.new_zeros(len(targets), 1, 4)
    num = _host_to_device([len(t["labels"]) for t in targets], device)
    return labels, boxes, num


def resolve_class_cost(class_cost, focal: bool) -> str:
    """``class_cost`` if given, else the old switch: ``focal=True`` is ``"focal"``."""
    if class_cost is None:
        return "focal" if focal else "softmax"
    _checks.one_of(class_cost, CLASS_COSTS, "class_cost")
    if focal and class_cost != "focal":
        raise ValueError(f"focal=True asks for the focal class cost, class_cost={class_cost!r} for another; give one")
    return class_cost


def matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets, cost_class=1.0, cost_bbox=1.0,
                  cost_giou=1.0, focal=False, focal_alpha=0.25, focal_gamma=2.0, *, class_cost=None, iou_power=1.0,
                  backend="auto") -> torch.Tensor:
    """Per-image matching cost ``[B, Q, T]`` (float32, or float64 for float64 logits):
    ``cost_bbox * L1 + cost_class * class_term + cost_giou * -GIoU`` of cxcywh boxes.

    ``class_cost`` (or the older ``focal`` switch) picks the class term:

    * ``"softmax"`` (default; ``focal=False``): DETR's ``-softmax(logits)[label]``;
    * ``"focal"`` (``focal=True``): Deformable DETR's focal cost (``focal_alpha``, ``focal_gamma``),
      also DINO's, H-DETR's, D-FINE's and DEIM's;
    * ``"focal_logsigmoid"``: RF-DETR's focal cost, whose logs are ``logsigmoid`` (no ``1e-8``);
    * ``"iou_aware"``: DEIMv2's cost (``change_matcher``): ``-(sigmoid(logit)[label] *
      IoU ** iou_power)``. DEIMv2 adds no L1 or GIoU term: pass ``cost_class=1, cost_bbox=0,
      cost_giou=0`` to reproduce it.

    Columns ``t >= num_targets[b]`` are +inf. On the CPU a label outside ``[0, K)`` or a
    ``num_targets`` outside ``[0, T]`` raises here, where checking is free; the op itself gives a
    NaN column (bad label) or a NaN block (bad count), which the solver reports as invalid.
    """
    pred_logits = _checks.floating(pred_logits, "pred_logits")
    pred_boxes = _checks.floating(pred_boxes, "pred_boxes")
    tgt_boxes = _checks.floating(tgt_boxes, "tgt_boxes")
    tgt_labels = _checks.index_tensor(tgt_labels, "tgt_labels")
    num_targets = _checks.index_tensor(num_targets, "num_targets")
    class_cost = resolve_class_cost(class_cost, bool(focal))
    weights = {}
    for name, value in (("cost_class", cost_class), ("cost_bbox", cost_bbox), ("cost_giou", cost_giou),
                        ("focal_alpha", focal_alpha), ("focal_gamma", focal_gamma), ("iou_power", iou_power)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        weights[name] = float(value)
    if not (math.isfinite(weights["iou_power"]) and weights["iou_power"] >= 0):
        raise ValueError(f"iou_power must be a finite number >= 0, got {iou_power}")
    for name, t in (("pred_boxes", pred_boxes), ("tgt_labels", tgt_labels), ("tgt_boxes", tgt_boxes),
                    ("num_targets", num_targets)):
        _checks.same_device("pred_logits", pred_logits, name, t)
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be [B, Q, K], got {tuple(pred_logits.shape)}")
    B, Q = pred_logits.shape[:2]
    if tgt_labels.dim() != 2 or tgt_labels.shape[0] != B:
        raise ValueError(f"tgt_labels must be [B, T] with B = {B} (from pred_logits), got {tuple(tgt_labels.shape)}")
    T = tgt_labels.shape[1]
    expected = (("pred_boxes", pred_boxes, (B, Q, 4)), ("tgt_boxes", tgt_boxes, (B, T, 4)),
                ("num_targets", num_targets, (B,)))
    for name, t, shape in expected:
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} (B, Q, T from pred_logits and tgt_labels), got {tuple(t.shape)}")
    if pred_logits.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ((num_targets < 0) | (num_targets > T)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"num_targets[{b}] = {int(num_targets[b])} is outside [0, {T}] (T = tgt_labels.shape[1])")
        if tgt_labels.numel():
            k = pred_logits.shape[-1]
            valid = torch.arange(T) < num_targets[:, None]
            bad = valid & ((tgt_labels < 0) | (tgt_labels >= k))
            if bad.any():
                raise ValueError(f"tgt_labels must be in [0, {k}) (the number of classes of pred_logits)")
    _extension.load()
    args = (pred_logits.detach(), pred_boxes.detach(), tgt_labels, tgt_boxes.detach(), num_targets,
            weights["cost_class"], weights["cost_bbox"], weights["cost_giou"], class_cost, weights["focal_alpha"],
            weights["focal_gamma"], weights["iou_power"])
    if _backend.resolve(backend, pred_logits.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        return torch.ops.detr_ops.matching_cost_triton(*args)
    return torch.ops.detr_ops.matching_cost(*args)
