"""One-to-many matching for training: Group DETR's query groups and H-DETR's repeated targets.

:func:`match` is the one place where these modes meet the matcher. It is written with what
``detr_ops.HungarianMatcher`` offers today (DETR's ``forward(outputs, targets)``):

* ``groups=K`` (Group DETR, Chen et al. 2022): outputs ``[B, K * Q, ...]`` are viewed as ``K * B``
  images of ``Q`` queries, each matched one-to-one with all of its image's targets;
* ``capacity=k`` (H-DETR, Jia et al. 2023): every target is repeated k times, so each may take up
  to k queries (H-DETR's ``k_one2many``).

When the matcher gains ``match(..., groups=K)`` / ``capacity=k`` / ``forward_many`` (the matching
issue), replace the body of :func:`match` with that call: the return contract stays DETR's list
of ``(query_index, target_index)`` per image, with target indices into the *original* targets.
"""
import torch


def repeat_targets(targets, k):
    """H-DETR's ``multi_targets``: every target's boxes and labels repeated k times (k blocks)."""
    return [dict(t, labels=t["labels"].repeat(k), boxes=t["boxes"].repeat(k, 1)) for t in targets]


def match(matcher, outputs, targets, groups=1, capacity=1):
    """DETR-format indices for ``outputs["pred_logits"] [B, groups * Q, C]`` against ``targets``.

    Query indices run over all ``groups * Q`` queries (ascending); target indices are into each
    image's original targets (a target matched by several queries appears several times)."""
    if groups < 1 or capacity < 1:
        raise ValueError(f"groups and capacity must be >= 1, got {groups} and {capacity}")
    if groups == 1 and capacity == 1:
        return matcher(outputs, targets)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    b, n = logits.shape[:2]
    if n % groups:
        raise ValueError(f"{n} queries cannot form {groups} equal groups")
    q = n // groups
    expanded = repeat_targets(targets, capacity) if capacity > 1 else targets
    # Group g of image i becomes image i * groups + g (a view: [B, K, Q, ...] -> [B * K, Q, ...]).
    grouped = {"pred_logits": logits.reshape(b * groups, q, logits.shape[-1]),
               "pred_boxes": boxes.reshape(b * groups, q, 4)}
    indices = matcher(grouped, [t for t in expanded for _ in range(groups)])
    out = []
    for i in range(b):
        num_targets = targets[i]["labels"].shape[0]
        rows, cols = [], []
        for g in range(groups):
            src, tgt = indices[i * groups + g]
            rows.append(src + g * q)
            cols.append(tgt % num_targets if num_targets else tgt)
        out.append((torch.cat(rows), torch.cat(cols)))
    return out
