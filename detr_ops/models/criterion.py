"""``SetCriterion``: DETR's set-prediction loss over Hungarian-matched predictions.

Per decoder layer (the last, each auxiliary one, and the two-stage encoder proposals):

* ``loss_ce``: softmax cross-entropy with a down-weighted "no object" class (DETR, ``focal=False``)
  or sigmoid focal loss over one-hot targets (Deformable DETR, ``focal=True``), normalised by
  the number of target boxes as the originals do;
* ``loss_bbox``: L1 between matched cxcywh boxes; ``loss_giou``: ``1 - GIoU`` of the same pairs,
  both summed and divided by the number of target boxes.

The number of target boxes is averaged over all processes when ``torch.distributed`` is
initialised, so every rank normalises by the same figure. It stays a tensor: no host sync.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detr_ops.models import ops_switch


def sigmoid_focal_loss(logits, targets, num_boxes, alpha=0.25, gamma=2.0):
    """Deformable DETR's focal loss: mean over queries, summed over images and classes, / num_boxes."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


class SetCriterion(nn.Module):
    """Args:
        num_classes: object classes, without "no object".
        matcher: ``forward(outputs, targets) -> [(index_i, index_j)]`` (DETR's interface).
        weight_dict: loss name -> weight; aux / encoder losses are looked up with their suffix
            (``loss_ce_0``, ``loss_ce_enc``), see :func:`expand_weight_dict`.
        eos_coef: weight of the "no object" class (softmax only).
        focal: sigmoid focal classification (Deformable DETR) instead of softmax.
        ops: ``"detr_ops"`` or ``"reference"``: which GIoU loss implementation runs.
    """

    def __init__(self, num_classes, matcher, weight_dict, eos_coef=0.1, focal=False, focal_alpha=0.25,
                 focal_gamma=2.0, ops="detr_ops"):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.giou_loss = ops_switch.giou_loss(ops)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @staticmethod
    def _src_index(indices):
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def loss_labels(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]
        batch, src = self._src_index(indices)
        batch, src = batch.to(logits.device), src.to(logits.device)
        matched = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch, src] = matched.to(logits.device)
        if self.focal:
            # One-hot over num_classes + 1 columns, then drop the "no object" column: unmatched
            # queries get all-zero targets.
            onehot = torch.zeros(*logits.shape[:2], self.num_classes + 1, dtype=logits.dtype, device=logits.device)
            onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
            onehot = onehot[:, :, :-1]
            loss = sigmoid_focal_loss(logits, onehot, num_boxes, self.focal_alpha, self.focal_gamma) * logits.shape[1]
        else:
            loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        return {"loss_ce": loss}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        batch, src = self._src_index(indices)
        src_boxes = outputs["pred_boxes"][batch.to(outputs["pred_boxes"].device), src.to(outputs["pred_boxes"].device)]
        target_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)])
        target_boxes = target_boxes.to(src_boxes.dtype)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        loss_giou = self.giou_loss(src_boxes, target_boxes).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _losses(self, outputs, targets, num_boxes, suffix):
        indices = self.matcher(outputs, targets)
        losses = {}
        losses.update(self.loss_labels(outputs, targets, indices, num_boxes))
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return {k + suffix: v for k, v in losses.items()}, indices

    def num_boxes(self, targets, device):
        n = torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return n.clamp(min=1)

    def forward(self, outputs, targets):
        """Returns the dict of every (weighted-to-be) loss term and the last layer's matching indices."""
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        last = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
        losses, indices = self._losses(last, targets, num_boxes, "")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, num_boxes, f"_{i}")[0])
        if "enc_outputs" in outputs:
            # Two-stage proposals are class-agnostic: every target is class 0 for the encoder.
            binary = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            losses.update(self._losses(outputs["enc_outputs"], binary, num_boxes, "_enc")[0])
        return losses, indices

    def total(self, losses):
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


def expand_weight_dict(base, num_aux, two_stage=False):
    """``{"loss_ce": w, ...}`` -> the same weights for every aux layer (``_0`` ..) and ``_enc``."""
    out = dict(base)
    for i in range(num_aux):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    if two_stage:
        out.update({f"{k}_enc": v for k, v in base.items()})
    return out
