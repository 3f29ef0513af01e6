"""``HungarianMatcher``: drop-in for DETR's and Deformable DETR's matcher, on the fused ops.

The original builds a cross-image cost matrix, copies it to the host and loops scipy per image.
This one computes each image's cost block in one kernel (:func:`detr_ops.matching_cost`) and solves
all images in one call (:func:`detr_ops.batched_linear_sum_assignment`), on the outputs' device,
with scipy's exact indices.

* ``forward(outputs, targets)`` returns what the original returns: a list of
  ``(index_i, index_j)`` int64 CPU tensors. It copies the result to the host once, as the original
  does (building per-image lists of different lengths needs the sizes on the host).
* ``match(outputs, targets)`` keeps everything on the device with no synchronisation:
  ``(col_for_row [B, Q], status [B])``, for training loops that index with padded tensors.
"""
import torch
from torch import nn

from detr_ops.ops.linear_sum_assignment import batched_linear_sum_assignment, raise_for_status
from detr_ops.ops.matching_cost import matching_cost, pad_targets


class HungarianMatcher(nn.Module):
    """``focal=False``: DETR's softmax class cost; ``focal=True``: Deformable DETR's focal cost."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1, focal: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, *, backend: str = "auto"):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma
        self.backend = backend

    @torch.no_grad()
    def match(self, outputs, targets=None, *, padded_targets=None):
        """Device-side matching, no host synchronisation.

        ``targets`` is DETR's list of ``{"labels", "boxes"}``; or pass ``padded_targets =
        (tgt_labels [B, T], tgt_boxes [B, T, 4], num_targets [B])`` already on the device (this form
        also captures into a CUDA graph). Returns ``(col_for_row [B, Q] int64, status [B])``: the
        target matched to each query or -1, and the solver's status per image (0 ok; see
        :func:`detr_ops.batched_linear_sum_assignment`).
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if padded_targets is None:
            if targets is None:
                raise ValueError("pass targets (DETR's list of dicts) or padded_targets")
            padded_targets = pad_targets(targets, device=logits.device)
        labels, tgt_boxes, num = padded_targets
        cost = matching_cost(logits, boxes, labels, tgt_boxes, num, self.cost_class, self.cost_bbox, self.cost_giou,
                             self.focal, self.focal_alpha, self.focal_gamma, backend=self.backend)
        return batched_linear_sum_assignment(cost, None, num, check=False, backend=self.backend)

    @torch.no_grad()
    def forward(self, outputs, targets):
        """DETR's interface: a list, per image, of ``(index_i, index_j)`` int64 CPU tensors, the
        matched queries in ascending order and their targets, identical to the original's."""
        col_for_row, status = self.match(outputs, targets)
        # One transfer for both (the original's .cpu() synchronises the same way).
        host = torch.cat([col_for_row, status.to(col_for_row.dtype)[:, None]], dim=1).cpu()
        col_for_row, status = host[:, :-1], host[:, -1]
        raise_for_status(status)
        indices = []
        for cols in col_for_row:
            rows = (cols >= 0).nonzero().flatten()
            indices.append((rows, cols[rows]))
        return indices
