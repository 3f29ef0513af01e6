"""The whole DETR matching cost in one pass: ``torch.ops.detr_ops.matching_cost``.

DETR's matcher builds a cross-image ``[B*Q, sum T]`` matrix (softmax, cdist, GIoU, each a separate
pass) and throws away every block that pairs a query with another image's targets. The fused op
computes only the per-image blocks, ``[B, Q, T]`` over padded targets, in one kernel; it is not
differentiable (matching runs under ``torch.no_grad``).
"""
import torch
from torch.nn.utils.rnn import pad_sequence

from detr_ops import _backend, _extension
from detr_ops.ops import _checks


def pad_targets(targets, device=None):
    """DETR's list of ``{"labels": [T_i], "boxes": [T_i, 4]}`` -> ``(labels [B,T], boxes [B,T,4],
    num_targets [B])`` with T = max T_i (at least 1 column, so the shapes stay static-friendly).
    No host synchronisation: the sizes come from the tensors' shapes."""
    if not isinstance(targets, (list, tuple)) or len(targets) == 0:
        raise ValueError("targets must be a non-empty list of dicts with 'labels' and 'boxes'")
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}] must have 'labels' and 'boxes'")
        if t["boxes"].dim() != 2 or t["boxes"].shape[-1] != 4 or t["labels"].shape != t["boxes"].shape[:1]:
            raise ValueError(
                f"targets[{i}] must have labels [T] and boxes [T, 4], got {tuple(t['labels'].shape)} and "
                f"{tuple(t['boxes'].shape)}"
            )
    device = device or targets[0]["boxes"].device
    labels = pad_sequence([t["labels"].to(device, torch.int64) for t in targets], batch_first=True)
    boxes = pad_sequence([t["boxes"].to(device) for t in targets], batch_first=True)
    if labels.shape[1] == 0:
        labels = labels.new_zeros(len(targets), 1)
        boxes = boxes.new_zeros(len(targets), 1, 4)
    num = torch.tensor([len(t["labels"]) for t in targets], dtype=torch.int64, device=device)
    return labels, boxes, num


def matching_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets, cost_class=1.0, cost_bbox=1.0,
                  cost_giou=1.0, focal=False, focal_alpha=0.25, focal_gamma=2.0, *, backend="auto") -> torch.Tensor:
    """Per-image DETR matching cost ``[B, Q, T]`` (float32, or float64 for float64 logits).

    ``focal=False``: DETR's ``-softmax(logits)[label]`` class cost; ``focal=True``: Deformable
    DETR's focal cost. Columns ``t >= num_targets[b]`` are +inf; a label outside ``[0, K)`` gives a
    NaN column (on CPU it raises here, where checking is free).
    """
    pred_logits = _checks.floating(pred_logits, "pred_logits")
    pred_boxes = _checks.floating(pred_boxes, "pred_boxes")
    tgt_boxes = _checks.floating(tgt_boxes, "tgt_boxes")
    tgt_labels = _checks.index_tensor(tgt_labels, "tgt_labels")
    num_targets = _checks.index_tensor(num_targets, "num_targets")
    for name, t in (("pred_boxes", pred_boxes), ("tgt_labels", tgt_labels), ("tgt_boxes", tgt_boxes),
                    ("num_targets", num_targets)):
        _checks.same_device("pred_logits", pred_logits, name, t)
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be [B, Q, K], got {tuple(pred_logits.shape)}")
    B, Q = pred_logits.shape[:2]
    T = tgt_labels.shape[-1] if tgt_labels.dim() == 2 else -1
    expected = (("pred_boxes", pred_boxes, (B, Q, 4)), ("tgt_labels", tgt_labels, (B, T)),
                ("tgt_boxes", tgt_boxes, (B, T, 4)), ("num_targets", num_targets, (B,)))
    for name, t, shape in expected:
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {list(shape)} (B, Q, T from pred_logits and tgt_labels), got {tuple(t.shape)}")
    if pred_logits.device.type == "cpu" and not torch.compiler.is_compiling() and tgt_labels.numel():
        k = pred_logits.shape[-1]
        valid = torch.arange(tgt_labels.shape[1]) < num_targets.clamp(min=0)[:, None]
        bad = valid & ((tgt_labels < 0) | (tgt_labels >= k))
        if bad.any():
            raise ValueError(f"tgt_labels must be in [0, {k}) (the number of classes of pred_logits)")
    _extension.load()
    args = (pred_logits.detach(), pred_boxes.detach(), tgt_labels, tgt_boxes.detach(), num_targets, float(cost_class),
            float(cost_bbox), float(cost_giou), bool(focal), float(focal_alpha), float(focal_gamma))
    if _backend.resolve(backend, pred_logits.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        return torch.ops.detr_ops.matching_cost_triton(*args)
    return torch.ops.detr_ops.matching_cost(*args)
