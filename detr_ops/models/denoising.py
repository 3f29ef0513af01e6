"""DINO's contrastive denoising (CDN): noised copies of the ground truth as extra decoder queries.

Each of ``G`` groups holds a positive and a negative copy of every target slot: positives are
boxes moved by less than half their size (``box_noise_scale`` x a uniform draw in [0, 1) of half
the width / height per corner) and must reconstruct their target; negatives are moved by 1-2x
that and must predict "no object". A fraction ``label_noise_ratio / 2`` of labels is replaced by
a random class. Query content is ``label_enc(label)``, the reference box is the noised box.

Arithmetic as in DINO's ``prepare_for_cdn`` (``models/dino/dn_components.py``), with one change
that removes its host synchronisation: DINO sizes the groups from the batch's largest target count
(``int(max(known_num))``, a device read, plus ``nonzero`` for the label noise); here every image
has a fixed number ``M`` of target slots (``max_targets``), so ``G`` follows DINO's rule with ``M`` for
``max_known`` (:func:`num_groups`) and every shape is a constant of the configuration. Slots past
an image's target count are zero queries whose outputs get no box loss, exactly DINO's padding;
an image with more than ``M`` targets denoises its first ``M`` (the matching part still uses all).
"""
import torch
import torch.nn.functional as F

from detr_ops.models.deformable_transformer import inverse_sigmoid
from detr_ops.ops.box_convert import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

# DINO's util.misc.inverse_sigmoid clamps at 1e-3 (Deformable DETR's at 1e-5).
DINO_EPS = 1e-3


def num_groups(dn_number, max_targets):
    """DINO's group count with the batch's largest target count replaced by the fixed slot count:
    ``2 * dn_number // (2 * M)`` when ``2 * dn_number >= 100`` (DINO's 100 -> 100 // M), else
    ``2 * dn_number`` groups whatever the targets; at least 1."""
    doubled = 2 * dn_number
    if doubled >= 100:
        return max(1, doubled // (2 * max_targets))
    return max(1, doubled)


def pad_targets_fixed(targets, max_targets, device=None, dtype=None):
    """DETR's target list -> ``labels [B, M]`` (int64), ``boxes [B, M, 4]``, ``valid [B, M]`` (bool).

    Only tensor shapes are read (Python ints): nothing is copied from the device."""
    if max_targets < 1:
        raise ValueError(f"max_targets must be >= 1, got {max_targets}")
    device = device or targets[0]["boxes"].device
    dtype = dtype or targets[0]["boxes"].dtype
    labels, boxes, valid = [], [], []
    slots = torch.arange(max_targets, device=device)
    for t in targets:
        n = min(t["labels"].shape[0], max_targets)
        labels.append(F.pad(t["labels"][:n].to(device=device, dtype=torch.int64), (0, max_targets - n)))
        boxes.append(F.pad(t["boxes"][:n].to(device=device, dtype=dtype), (0, 0, 0, max_targets - n)))
        valid.append(slots < n)
    return torch.stack(labels), torch.stack(boxes), torch.stack(valid)


def cdn_queries(labels, boxes, valid, dn_number, label_noise_ratio, box_noise_scale, num_classes, label_enc):
    """Padded targets -> ``(content [B, 2*G*M, C], reference logits [B, 2*G*M, 4], G)``.

    Query ``2*g*M + j`` is group g's positive copy of slot j, ``(2*g + 1)*M + j`` its negative copy.
    """
    b, m = labels.shape
    groups = num_groups(dn_number, m)
    labels_r = labels[:, None, :].expand(b, 2 * groups, m)
    boxes_r = boxes[:, None].expand(b, 2 * groups, m, 4)
    if label_noise_ratio > 0:
        flip = torch.rand(labels_r.shape, device=labels.device) < label_noise_ratio * 0.5
        labels_r = torch.where(flip, torch.randint_like(labels_r, 0, num_classes), labels_r)
    if box_noise_scale > 0:
        xyxy = box_cxcywh_to_xyxy(boxes_r)
        half = torch.cat([boxes_r[..., 2:] / 2, boxes_r[..., 2:] / 2], -1)
        sign = torch.randint(0, 2, boxes_r.shape, device=boxes.device).to(boxes.dtype) * 2.0 - 1.0
        part = torch.rand(boxes_r.shape, device=boxes.device, dtype=boxes.dtype)
        # Negative copies (odd repeats) move by [1, 2) x half the size instead of [0, 1).
        negative = (torch.arange(2 * groups, device=boxes.device) % 2).to(boxes.dtype)
        part = (part + negative.view(1, -1, 1, 1)) * sign
        xyxy = (xyxy + part * half * box_noise_scale).clamp(min=0.0, max=1.0)
        boxes_r = box_xyxy_to_cxcywh(xyxy)
    keep = valid[:, None, :, None]
    content = label_enc(labels_r).masked_fill(~keep, 0.0)
    reference = inverse_sigmoid(boxes_r, DINO_EPS).masked_fill(~keep, 0.0)
    c = content.shape[-1]
    return content.reshape(b, 2 * groups * m, c), reference.reshape(b, 2 * groups * m, 4), groups


def positive_slots(outputs, groups, max_targets):
    """The positive queries' predictions of a denoising output ``[B, 2*G*M, ...]`` as ``[B, G, M, ...]``."""
    b = outputs.shape[0]
    return outputs.view(b, groups, 2, max_targets, *outputs.shape[2:])[:, :, 0]
