"""DETR's and Deformable DETR's Hungarian matchers as their repositories compute them: one cost
matrix over the whole batch, ``[B*Q, sum T]``, copied to the host, split per image, and solved
by ``scipy.optimize.linear_sum_assignment`` in a Python loop. The baseline that detr_ops's fused
cost + batched solver is tested and timed against, and the matcher of the models' reference mode.
"""
import scipy.optimize
import torch
from torch import nn

from detr_ops.ops.box_convert import box_cxcywh_to_xyxy
from detr_ops.reference.box_iou import generalized_box_iou_reference


def detr_cost_matrix(outputs, targets, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, focal=False, focal_alpha=0.25,
                     focal_gamma=2.0) -> torch.Tensor:
    """The cross-image cost ``[B, Q, sum T]`` exactly as the original matchers build it."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    logits = outputs["pred_logits"].flatten(0, 1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    if focal:
        out_prob = logits.sigmoid()
        neg = (1 - focal_alpha) * (out_prob**focal_gamma) * (-(1 - out_prob + 1e-8).log())
        pos = focal_alpha * ((1 - out_prob) ** focal_gamma) * (-(out_prob + 1e-8).log())
        class_cost = pos[:, tgt_ids] - neg[:, tgt_ids]
    else:
        class_cost = -logits.softmax(-1)[:, tgt_ids]
    l1_cost = torch.cdist(out_bbox, tgt_bbox, p=1)
    giou_cost = -generalized_box_iou_reference(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    cost = cost_bbox * l1_cost + cost_class * class_cost + cost_giou * giou_cost
    return cost.view(bs, num_queries, -1)


class HungarianMatcherReference(nn.Module):
    """DETR's HungarianMatcher (``focal=False``) / Deformable DETR's (``focal=True``), host loop."""

    def __init__(self, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, focal=False, focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal, self.focal_alpha, self.focal_gamma = focal, focal_alpha, focal_gamma

    @torch.no_grad()
    def forward(self, outputs, targets):
        cost = detr_cost_matrix(outputs, targets, self.cost_class, self.cost_bbox, self.cost_giou, self.focal,
                                self.focal_alpha, self.focal_gamma).cpu()
        sizes = [len(v["boxes"]) for v in targets]
        indices = [scipy.optimize.linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]

    def forward_many(self, list_of_outputs, targets):
        """One ``forward`` per outputs dict (the codebases' loop), with detr_ops.HungarianMatcher's
        ``forward_many`` interface: ``targets`` shared by every dict, or a list with one per dict."""
        per_output = len(targets) > 0 and all(isinstance(t, (list, tuple)) for t in targets)
        targets_list = targets if per_output else [targets] * len(list_of_outputs)
        return [self(outputs, t) for outputs, t in zip(list_of_outputs, targets_list)]
