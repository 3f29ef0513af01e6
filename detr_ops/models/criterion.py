"""``SetCriterion``: DETR's set-prediction loss over Hungarian-matched predictions, and the losses
of the training-only branches the models add.

Per decoder layer (the last, each auxiliary one, and the two-stage encoder proposals):

* ``loss_ce``: softmax cross-entropy with a down-weighted "no object" class (DETR, ``focal=False``)
  or sigmoid focal loss over one-hot targets (Deformable DETR / DINO, ``focal=True``), normalised
  by the number of target boxes as the originals do;
* ``loss_bbox``: L1 between matched cxcywh boxes; ``loss_giou``: ``1 - GIoU`` of the same pairs,
  both summed and divided by the number of target boxes.

Branches, each present when the model's output dict has its key (suffix of the loss names):

* ``enc_outputs`` (Deformable DETR two-stage, ``_enc``): class-agnostic proposals;
* ``interm_outputs`` (DINO, ``_interm``): the selected encoder proposals, with their classes;
* ``query_groups`` (Group DETR): the main output holds K groups, each matched one-to-one with all
  targets, normalised by K x the number of boxes (the average over groups);
* ``one_to_many_outputs`` (H-DETR, ``_one2many``): matched with every target repeated
  ``one_to_many`` times, normalised by that many boxes;
* ``dn_outputs`` (DINO, ``_dn``): denoising queries, no matching; positives reconstruct their
  target, the class loss runs over all denoising queries, normalised by groups x boxes (DINO's);
* ``co_outputs`` (``_co``) and ``atss_outputs`` (``loss_atss_*``): the Co-DETR-style head's positive
  queries, supervised with the head's ATSS assignment, and the head's own losses
  (:mod:`detr_ops.models.co_head`).

Matching goes through :func:`detr_ops.models.one_to_many.match` (groups / target repetition). The
number of target boxes is averaged over all processes when ``torch.distributed`` is initialised,
so every rank normalises by the same figure; it stays a tensor: no host sync. The denoising,
Co-DETR and ATSS losses read padded, fixed-size tensors: no host sync either.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detr_ops.models import co_head, denoising, one_to_many, ops_switch


def sigmoid_focal_loss(logits, targets, num_boxes, alpha=0.25, gamma=2.0):
    """Deformable DETR's focal loss: mean over queries, summed over images and classes, / num_boxes."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def _all_reduce_mean(n):
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1)


class SetCriterion(nn.Module):
    """Args:
        num_classes: object classes, without "no object".
        matcher: ``forward(outputs, targets) -> [(index_i, index_j)]`` (DETR's interface).
        weight_dict: loss name -> weight; aux / encoder losses are looked up with their suffix
            (``loss_ce_0``, ``loss_ce_enc``), see :func:`expand_weight_dict`.
        eos_coef: weight of the "no object" class (softmax only).
        focal: sigmoid focal classification (Deformable DETR) instead of softmax.
        ops: ``"detr_ops"`` or ``"reference"``: which GIoU loss implementation runs.
        one_to_many: H-DETR's k: each target is repeated k times for ``one_to_many_outputs``.
    """

    def __init__(self, num_classes, matcher, weight_dict, eos_coef=0.1, focal=False, focal_alpha=0.25,
                 focal_gamma=2.0, ops="detr_ops", one_to_many=6):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.one_to_many = one_to_many
        self.giou_loss = ops_switch.giou_loss(ops)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    @staticmethod
    def _src_index(indices):
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def _focal_onehot(self, logits, target_classes):
        # One-hot over num_classes + 1 columns, then drop the "no object" column: unmatched
        # queries get all-zero targets.
        onehot = torch.zeros(*logits.shape[:2], self.num_classes + 1, dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
        return onehot[:, :, :-1]

    def loss_labels(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]
        batch, src = self._src_index(indices)
        batch, src = batch.to(logits.device), src.to(logits.device)
        matched = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch, src] = matched.to(logits.device)
        if self.focal:
            onehot = self._focal_onehot(logits, target_classes)
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

    def _losses(self, outputs, targets, num_boxes, suffix, groups=1, capacity=1):
        indices = one_to_many.match(self.matcher, outputs, targets, groups=groups, capacity=capacity)
        losses = {}
        losses.update(self.loss_labels(outputs, targets, indices, num_boxes))
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        return {k + suffix: v for k, v in losses.items()}, indices

    def _all_layers(self, outputs, targets, num_boxes, suffix, **modes):
        """Losses of the last layer (``suffix``) and of each aux layer (``suffix_i``)."""
        losses, indices = self._losses(outputs, targets, num_boxes, suffix, **modes)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, num_boxes, f"{suffix}_{i}", **modes)[0])
        return losses, indices

    def num_boxes(self, targets, device):
        return _all_reduce_mean(torch.as_tensor(float(sum(len(t["labels"]) for t in targets)), device=device))

    def forward(self, outputs, targets):
        """Returns the dict of every (weighted-to-be) loss term and the last layer's matching indices."""
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        groups = outputs.get("query_groups", 1)
        main = {k: v for k, v in outputs.items() if k in ("pred_logits", "pred_boxes", "aux_outputs")}
        losses, indices = self._all_layers(main, targets, num_boxes * groups, "", groups=groups)
        if "enc_outputs" in outputs:
            # Two-stage proposals are class-agnostic: every target is class 0 for the encoder.
            binary = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            losses.update(self._losses(outputs["enc_outputs"], binary, num_boxes, "_enc")[0])
        if "interm_outputs" in outputs:
            losses.update(self._losses(outputs["interm_outputs"], targets, num_boxes, "_interm")[0])
        if "one_to_many_outputs" in outputs:
            k = self.one_to_many
            losses.update(self._all_layers(outputs["one_to_many_outputs"], targets, num_boxes * k, "_one2many",
                                           capacity=k)[0])
        if "dn_outputs" in outputs:
            losses.update(self.denoising_losses(outputs["dn_outputs"], targets, num_boxes))
        if "co_outputs" in outputs:
            losses.update(self.co_query_losses(outputs["co_outputs"]))
        if "atss_outputs" in outputs:
            a = outputs["atss_outputs"]
            num_pos = _all_reduce_mean(a["positive"].sum().to(a["cls"].dtype))
            losses.update(co_head.head_losses(a, self.num_classes, self.giou_loss, num_pos, self.focal_alpha,
                                              self.focal_gamma))
        return losses, indices

    # --- training-only branches without matching -------------------------------------------------

    def _assigned_losses(self, outputs, labels, boxes, box_weight, num_boxes):
        """Focal class loss over all queries (``labels == num_classes``: background) and L1 + GIoU
        on the queries with ``box_weight`` 1, all divided by ``num_boxes``; fixed shapes, no
        boolean indexing (rows of weight 0 compare a box with itself, finite, then zeroed)."""
        logits, pred = outputs["pred_logits"], outputs["pred_boxes"]
        onehot = self._focal_onehot(logits, labels)
        loss_ce = sigmoid_focal_loss(logits, onehot, num_boxes, self.focal_alpha, self.focal_gamma) * logits.shape[1]
        w = box_weight.to(pred.dtype)
        target = torch.where(box_weight[..., None], boxes.to(pred.dtype), pred.detach())
        l1 = (F.l1_loss(pred, target, reduction="none").sum(-1) * w).sum() / num_boxes
        giou = (self.giou_loss(pred.reshape(-1, 4), target.reshape(-1, 4)).view_as(w) * w).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": l1, "loss_giou": giou}

    def _assigned_all_layers(self, outputs, labels, boxes, box_weight, num_boxes, suffix):
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses = {}
        for layer_suffix, out in layers:
            for k, v in self._assigned_losses(out, labels, boxes, box_weight, num_boxes).items():
                losses[k + suffix + layer_suffix] = v
        return losses

    def denoising_losses(self, dn, targets, num_boxes):
        """DINO's denoising losses (``loss_*_dn``, ``loss_*_dn_i``): the positive copy of slot j in
        group g reconstructs target j; everything else (negatives, empty slots) is background."""
        groups, m = dn["groups"], dn["max_targets"]
        labels, boxes, valid = denoising.pad_targets_fixed(targets, m, dn["pred_boxes"].device, dn["pred_boxes"].dtype)
        b = labels.shape[0]
        background = torch.full_like(labels, self.num_classes)
        # [B, G, 2, M]: positive half carries the labels of the valid slots.
        slot_labels = torch.stack([torch.where(valid, labels, background), background], 1)
        slot_labels = slot_labels[:, None].expand(b, groups, 2, m).reshape(b, -1)
        slot_boxes = boxes[:, None, None].expand(b, groups, 2, m, 4).reshape(b, -1, 4)
        positive = torch.stack([valid, torch.zeros_like(valid)], 1)[:, None].expand(b, groups, 2, m).reshape(b, -1)
        return self._assigned_all_layers(dn, slot_labels, slot_boxes, positive, num_boxes * groups, "_dn")

    def co_query_losses(self, co):
        """The Co-DETR positive queries: supervised with the head's assignment, normalised by the
        number of positive queries (Co-DETR's ``loss_single_aux``)."""
        t = co["targets"]
        num = _all_reduce_mean(t["positive"].sum().to(co["pred_boxes"].dtype))
        return self._assigned_all_layers(co, t["labels"], t["boxes"], t["positive"], num, "_co")

    def total(self, losses):
        return sum(losses[k] * w for k, w in self.weight_dict.items() if k in losses)


def expand_weight_dict(base, num_aux, two_stage=False, suffixes=()):
    """``{"loss_ce": w, ...}`` -> the same weights for every aux layer (``_0`` ..), ``_enc`` when
    ``two_stage``, and for every branch suffix in ``suffixes`` (``{"_dn": scale}``: that branch's
    last and aux layers, weights x scale)."""
    out = dict(base)
    for i in range(num_aux):
        out.update({f"{k}_{i}": v for k, v in base.items()})
    if two_stage:
        out.update({f"{k}_enc": v for k, v in base.items()})
    for suffix, scale in dict(suffixes).items():
        out.update({f"{k}{suffix}": v * scale for k, v in base.items()})
        for i in range(num_aux):
            out.update({f"{k}{suffix}_{i}": v * scale for k, v in base.items()})
    return out
