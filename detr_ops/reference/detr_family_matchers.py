"""The matchers of the modern DETR family restated from their repositories: a cross-image cost
matrix, ``.cpu()``, and a Python loop of ``scipy.optimize.linear_sum_assignment`` per image (per
group, per round). The baselines that :class:`detr_ops.HungarianMatcher`'s modes are tested and
timed against; each function names the file it restates.

The costs follow each codebase's arithmetic (``detr_family_cost_matrix``); the loops are copied
in spirit line by line, including their quirks, since the point is to return their indices.
"""
from typing import List, Optional

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F

from detr_ops.ops.box_convert import box_cxcywh_to_xyxy
from detr_ops.reference.box_iou import box_iou_reference, generalized_box_iou_reference
from detr_ops.reference.hungarian_matcher import detr_cost_matrix


def _as_index_pairs(indices):
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


def detr_family_cost_matrix(outputs, targets, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, class_cost="softmax",
                            focal_alpha=0.25, focal_gamma=2.0, iou_power=1.0) -> torch.Tensor:
    """The cross-image cost ``[B, Q, sum T]`` as each codebase builds it.

    * ``"softmax"`` / ``"focal"``: DETR's / Deformable DETR's ``models/matcher.py`` (also DINO,
      H-DETR, D-FINE, DEIM): :func:`detr_cost_matrix`.
    * ``"focal_logsigmoid"``: RF-DETR's ``rfdetr/models/matcher.py`` (focal cost with
      ``F.logsigmoid``).
    * ``"iou_aware"``: DEIMv2's ``engine/deim/matcher.py`` with ``change_matcher``:
      ``C = (-1) * (class_score * torch.pow(bbox_iou, iou_order_alpha))``, sigmoid scores, its
      ``box_iou``; plus the L1 and GIoU terms weighted as given (0 in DEIMv2).
    """
    if class_cost in ("softmax", "focal"):
        return detr_cost_matrix(outputs, targets, cost_class, cost_bbox, cost_giou, class_cost == "focal", focal_alpha,
                                focal_gamma)
    bs, num_queries = outputs["pred_logits"].shape[:2]
    logits = outputs["pred_logits"].flatten(0, 1)
    out_prob = logits.sigmoid()
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    giou = generalized_box_iou_reference(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    if class_cost == "focal_logsigmoid":
        neg = (1 - focal_alpha) * (out_prob**focal_gamma) * (-F.logsigmoid(-logits))
        pos = focal_alpha * ((1 - out_prob) ** focal_gamma) * (-F.logsigmoid(logits))
        class_term = pos[:, tgt_ids] - neg[:, tgt_ids]
    elif class_cost == "iou_aware":
        bbox_iou = box_iou_reference(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        class_term = (-1) * (out_prob[:, tgt_ids] * torch.pow(bbox_iou, iou_power))
    else:
        raise ValueError(f"unknown class_cost {class_cost!r}")
    cost = cost_bbox * torch.cdist(out_bbox, tgt_bbox, p=1) + cost_class * class_term + cost_giou * -giou
    return cost.view(bs, num_queries, -1)


def detr_loop(C: torch.Tensor, sizes: List[int]):
    """DETR's loop: ``[linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]``."""
    return [scipy.optimize.linear_sum_assignment(c[i]) for i, c in enumerate(C.split(sizes, -1))]


def group_detr_match(C: torch.Tensor, sizes: List[int], group_detr: int):
    """Group DETR / LW-DETR / RF-DETR (``rfdetr/models/matcher.py``): the groups' blocks of queries
    matched one after another, their query indices shifted by ``g * Q / group_detr`` and
    concatenated per image."""
    num_queries = C.shape[1]
    g_num_queries = num_queries // group_detr
    C_list = C.split(g_num_queries, dim=1)
    indices = []
    for g_i in range(group_detr):
        indices_g = detr_loop(C_list[g_i], sizes)
        if g_i == 0:
            indices = indices_g
        else:
            indices = [(np.concatenate([a[0], b[0] + g_num_queries * g_i]), np.concatenate([a[1], b[1]]))
                       for a, b in zip(indices, indices_g)]
    return _as_index_pairs(indices)


def hdetr_one2many_match(outputs, targets, k_one2many: int, **cost):
    """H-DETR's one-to-many branch (``engine.py``'s ``train_hybrid``): every target repeated
    ``k_one2many`` times (``target["boxes"].repeat(k, 1)``), then the plain matcher. Returns H-DETR's
    indices (into the repeated targets) and the original targets' indices (``j % T``, Stable-DINO's
    ``repeat_times`` form)."""
    multi_targets = []
    for t in targets:
        multi_targets.append({"labels": t["labels"].repeat(k_one2many), "boxes": t["boxes"].repeat(k_one2many, 1)})
    C = detr_family_cost_matrix(outputs, multi_targets, **cost).cpu()
    indices = _as_index_pairs(detr_loop(C, [len(t["boxes"]) for t in multi_targets]))
    original = [(i, j % max(len(t["boxes"]), 1)) for (i, j), t in zip(indices, targets)]
    return indices, original


def deim_match(C: torch.Tensor, sizes: List[int], nan_cost: Optional[float] = 1.0, topk: int = 0):
    """D-FINE / DEIM's matcher after its cost (``engine/deim/matcher.py``, ``src/zoo/dfine/matcher.py``):
    ``C = torch.nan_to_num(C, nan=1.0)``, the scipy loop, and with ``return_topk=k`` its
    ``get_top_k_matches`` (rounds on the cost it masks in place, ``c[:, np.stack(idx_k)] = 1e6``)."""
    C = C.clone()
    if nan_cost is not None:
        C = torch.nan_to_num(C, nan=nan_cost)
    indices_pre = detr_loop(C, sizes)
    if not topk:
        return _as_index_pairs(indices_pre)
    indices_list = []
    for i in range(topk):
        indices_k = detr_loop(C, sizes) if i > 0 else indices_pre
        indices_list.append(_as_index_pairs(indices_k))
        for c, idx_k in zip(C.split(sizes, -1), indices_k):
            idx_k = np.stack(idx_k)
            c[:, idx_k] = 1e6
    return [(torch.cat([indices_list[i][j][0] for i in range(topk)], dim=0),
             torch.cat([indices_list[i][j][1] for i in range(topk)], dim=0)) for j in range(len(sizes))]


def family_matcher(outputs, targets, groups=1, capacity=1, topk_rounds=1, nan_cost=None, **cost):
    """One reference for every mode of :class:`detr_ops.HungarianMatcher`, each dispatched to the
    codebase loop it reproduces (the modes are not combined here)."""
    if sum(m != d for m, d in ((groups, 1), (capacity, 1), (topk_rounds, 1))) > 1:
        raise ValueError("the reference runs one mode at a time")
    if capacity > 1:
        return hdetr_one2many_match(outputs, targets, capacity, **cost)[1]
    C = detr_family_cost_matrix(outputs, targets, **cost).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    if groups > 1:
        if nan_cost is not None:
            C = torch.nan_to_num(C, nan=nan_cost)
        return group_detr_match(C, sizes, groups)
    return deim_match(C, sizes, nan_cost, topk_rounds if topk_rounds > 1 else 0)
