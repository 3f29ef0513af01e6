"""A Co-DETR-style auxiliary head: an ATSS-assigned dense head on the encoder memory whose positive
anchors also become extra, pre-assigned decoder queries (training only).

Co-DETR (Zong et al., 2023; Sense-X/Co-DETR ``projects/models``) trains one-to-many auxiliary heads
on the encoder output: their dense supervision reaches the encoder and backbone, and their positive
boxes are fed back to the decoder as "customised positive queries" supervised with the head's own
assignment (no Hungarian matching). Inference uses the DETR head alone. What is kept here:

* :class:`ATSSHead`: mmdet's ATSS head (``cls_convs`` / ``reg_convs`` of conv + GroupNorm + ReLU,
  ``atss_cls``, ``atss_reg``, ``atss_centerness``, one learnable ``scales.N`` per level; one square
  anchor per location of side ``anchor_scale`` cells), run on the encoder memory reshaped back to
  its levels. Box deltas use mmdet's ``DeltaXYWHBBoxCoder`` (stds 0.1, 0.1, 0.2, 0.2).
* :func:`atss_assign`: ATSS (Zhang et al., 2020; mmdet ``ATSSAssigner``): per level and target the
  ``topk`` anchors closest to the target centre are candidates; the IoU threshold is the mean + std
  of the candidates' IoUs; candidates above it whose centre lies inside the target are positives;
  an anchor positive for several targets takes the one of highest IoU. Batched over images with
  padded targets and free of host synchronisation (no ``nonzero``/``item``): every shape is static.
* :func:`head_losses`: sigmoid focal classification over all anchors / #positives, GIoU of the
  decoded positives weighted by their centerness targets / sum of those, centerness BCE /
  #positives (ATSS's losses).
* :func:`positive_queries`: ``num_queries`` anchors per image, positives first in random order then
  random negatives as padding (Co-DETR's default, ``use_zero_padding=False``): the content query is
  ``aux_pos_trans_norm(aux_pos_trans(sine(anchor)))`` and the reference box the anchor (Co-DINO,
  ``with_coord_feat=False``). Padding negatives are supervised as background, as in Co-DETR.

Differences from Co-DETR, all for a small CPU model: one head (Co-DETR uses ATSS and Faster R-CNN),
no extra downsampled level and no neck (the head reads the encoder levels), anchor centres at cell
centres (mmdet's at cell corners), and the positive queries join the main decoder pass as their own
self-attention segment instead of a second decoder pass (equivalent: they attend to nothing else).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from detr_ops.models.deformable_transformer import inverse_sigmoid, proposal_pos_embed
from detr_ops.models.denoising import DINO_EPS
from detr_ops.ops.box_convert import box_cxcywh_to_xyxy

DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
MAX_LOG_RATIO = abs(math.log(16.0 / 1000))  # mmdet's wh_ratio_clip


class ConvGN(nn.Module):
    """mmcv's ConvModule(conv 3x3 without bias, GroupNorm, ReLU): keys ``conv.weight``, ``gn.*``."""

    def __init__(self, cin, cout, gn_groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(gn_groups, cout)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class Scale(nn.Module):
    def __init__(self, value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


class ATSSHead(nn.Module):
    def __init__(self, num_classes, channels, num_levels, stacked_convs=1, gn_groups=32, anchor_scale=8.0, topk=9):
        super().__init__()
        self.num_classes = num_classes
        self.anchor_scale = anchor_scale
        self.topk = topk
        self.cls_convs = nn.ModuleList(ConvGN(channels, channels, gn_groups) for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvGN(channels, channels, gn_groups) for _ in range(stacked_convs))
        self.atss_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        # mmdet's ATSSHead init: N(0, 0.01) convs, zero biases, class bias at a 1% prior.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, maps):
        """Per-level ``[B, C, H, W]`` maps -> flattened ``cls [B, S, K]``, ``deltas [B, S, 4]`` and
        ``centerness [B, S]``."""
        cls_out, reg_out, ctr_out = [], [], []
        for x, scale in zip(maps, self.scales):
            c, r = x, x
            for conv in self.cls_convs:
                c = conv(c)
            for conv in self.reg_convs:
                r = conv(r)
            cls_out.append(self.atss_cls(c).flatten(2).transpose(1, 2))
            reg_out.append(scale(self.atss_reg(r)).flatten(2).transpose(1, 2))
            ctr_out.append(self.atss_centerness(r).flatten(2).squeeze(1))
        return torch.cat(cls_out, 1), torch.cat(reg_out, 1), torch.cat(ctr_out, 1)


def memory_to_maps(memory, shapes):
    """Encoder memory ``[B, S, C]`` -> one ``[B, C, H, W]`` map per level."""
    maps, start = [], 0
    for h, w in shapes:
        maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w))
        start += h * w
    return maps


def anchors_cxcywh(shapes, valid_ratios, anchor_scale):
    """One square anchor per cell ``[B, S, 4]``, normalised to each image's unpadded extent: centre at
    the cell centre, side ``anchor_scale`` cells of its level (mmdet's ``octave_base_scale x stride``).
    Cells in the padding get centres beyond 1, so they are never inside a target."""
    out = []
    for lvl, (h, w) in enumerate(shapes):
        valid_w = valid_ratios[:, lvl, 0] * w  # [B] cells covering the image
        valid_h = valid_ratios[:, lvl, 1] * h
        ys = torch.arange(h, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        xs = torch.arange(w, dtype=valid_ratios.dtype, device=valid_ratios.device) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        cx = gx.reshape(1, -1) / valid_w[:, None]
        cy = gy.reshape(1, -1) / valid_h[:, None]
        bw = (anchor_scale / valid_w)[:, None].expand_as(cx)
        bh = (anchor_scale / valid_h)[:, None].expand_as(cy)
        out.append(torch.stack([cx, cy, bw, bh], -1))
    return torch.cat(out, 1)


def decode(anchors, deltas):
    """mmdet's DeltaXYWHBBoxCoder.decode on cxcywh anchors -> cxcywh boxes."""
    stds = deltas.new_tensor(DELTA_STDS)
    d = deltas * stds
    centre = anchors[..., :2] + d[..., :2] * anchors[..., 2:]
    size = anchors[..., 2:] * d[..., 2:].clamp(min=-MAX_LOG_RATIO, max=MAX_LOG_RATIO).exp()
    return torch.cat([centre, size], -1)


@torch.no_grad()
def atss_assign(anchors, level_sizes, gt_boxes, gt_valid, topk, iou_fn, aspect, inside_eps=1e-4):
    """Batched ATSS assignment.

    Args:
        anchors: ``[B, S, 4]`` cxcywh (normalised); ``level_sizes``: anchors per level (Python ints).
        gt_boxes: ``[B, M, 4]`` cxcywh, ``gt_valid [B, M]`` (padding slots are never assigned).
        iou_fn: pairwise IoU of xyxy boxes ``[B, N, 4] x [B, M, 4] -> [B, N, M]`` (the ops switch's).
        aspect: ``[B, 2]`` image width and height in any common unit, so centre distances are
            measured in pixels, not in normalised units that stretch non-square images.
    Returns ``(positive [B, S] bool, assigned target index [B, S] int64)``.
    """
    ious = iou_fn(box_cxcywh_to_xyxy(anchors), box_cxcywh_to_xyxy(gt_boxes))
    a_centre = anchors[..., :2] * aspect[:, None]
    g_centre = gt_boxes[..., :2] * aspect[:, None]
    dist = (a_centre[:, :, None] - g_centre[:, None]).pow(2).sum(-1).sqrt()  # [B, S, M]
    candidates, start = [], 0
    for n in level_sizes:
        k = min(topk, n)
        candidates.append(dist[:, start:start + n].topk(k, dim=1, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates, 1)  # [B, L*k, M]: distinct anchors per (image, target)
    cand_iou = ious.gather(1, cand)
    threshold = cand_iou.mean(1, keepdim=True) + cand_iou.std(1, keepdim=True)
    positive = cand_iou >= threshold
    # Candidate centres strictly inside their target (mmdet: min distance to the sides > 0.01 px).
    cx = anchors[..., 0:1].expand(-1, -1, cand.shape[2]).gather(1, cand)
    cy = anchors[..., 1:2].expand(-1, -1, cand.shape[2]).gather(1, cand)
    g = box_cxcywh_to_xyxy(gt_boxes)
    sides = torch.stack([cx - g[:, None, :, 0], cy - g[:, None, :, 1], g[:, None, :, 2] - cx, g[:, None, :, 3] - cy])
    positive = positive & (sides.min(0).values > inside_eps) & gt_valid[:, None, :]
    neg_inf = torch.full_like(ious, float("-inf"))
    overlaps = neg_inf.scatter(1, cand, torch.where(positive, cand_iou, torch.full_like(cand_iou, float("-inf"))))
    best, index = overlaps.max(-1)
    return best > float("-inf"), index


def centerness_target(anchors, boxes):
    """ATSS's centerness of each anchor centre inside its assigned box (0 where outside)."""
    g = box_cxcywh_to_xyxy(boxes)
    left, top = anchors[..., 0] - g[..., 0], anchors[..., 1] - g[..., 1]
    right, bottom = g[..., 2] - anchors[..., 0], g[..., 3] - anchors[..., 1]
    lr = torch.stack([left, right], -1).clamp(min=0)
    tb = torch.stack([top, bottom], -1).clamp(min=0)
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-12)) * (tb.min(-1).values /
                                                                     tb.max(-1).values.clamp(min=1e-12))
    return ratio.sqrt()


def assign(head, outputs, labels, boxes, valid, shapes, valid_ratios, iou_fn, aspect):
    """Runs ATSS for the head's outputs. Returns the dict the criterion scores (:func:`head_losses`)
    and the positive-query selection reads: anchors, predictions, per-anchor labels (``num_classes``
    = background), target boxes, positive mask and centerness targets."""
    cls, deltas, ctr = outputs
    anchors = anchors_cxcywh(shapes, valid_ratios, head.anchor_scale).to(deltas.dtype)
    sizes = [h * w for h, w in shapes]
    positive, index = atss_assign(anchors, sizes, boxes.to(deltas.dtype), valid, head.topk, iou_fn, aspect)
    assigned_boxes = boxes.to(deltas.dtype).gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    assigned_labels = torch.where(positive, labels.gather(1, index), torch.full_like(index, head.num_classes))
    return {"cls": cls, "deltas": deltas, "centerness": ctr, "anchors": anchors, "labels": assigned_labels,
            "boxes": assigned_boxes, "positive": positive,
            "centerness_target": centerness_target(anchors, assigned_boxes) * positive}


def head_losses(a, num_classes, giou_loss, num_positive, focal_alpha=0.25, focal_gamma=2.0):
    """ATSS's three losses. ``num_positive`` is a tensor (averaged over ranks, at least 1)."""
    cls = a["cls"]
    onehot = F.one_hot(a["labels"], num_classes + 1)[..., :num_classes].to(cls.dtype)
    prob = cls.sigmoid()
    ce = F.binary_cross_entropy_with_logits(cls, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    focal = ce * (1 - p_t) ** focal_gamma * (focal_alpha * onehot + (1 - focal_alpha) * (1 - onehot))
    pos = a["positive"].to(cls.dtype)
    weight = a["centerness_target"].to(cls.dtype)
    pred = decode(a["anchors"], a["deltas"])
    # Non-positive rows compare a box with itself (finite, zero weight): no boolean indexing, no sync.
    target = torch.where(a["positive"][..., None], a["boxes"], pred.detach())
    giou = giou_loss(pred.reshape(-1, 4), target.reshape(-1, 4)).view_as(weight)
    ctr = F.binary_cross_entropy_with_logits(a["centerness"], weight, reduction="none")
    return {
        "loss_atss_cls": focal.sum() / num_positive,
        "loss_atss_giou": (giou * weight).sum() / weight.sum().clamp(min=1e-6),
        "loss_atss_centerness": (ctr * pos).sum() / num_positive,
    }


def positive_queries(a, num_queries, aux_pos_trans, aux_pos_trans_norm, num_pos_feats):
    """Co-DETR's customised positive queries: ``num_queries`` anchors per image, positives first.

    Returns ``content [B, P, C]``, ``reference logits [B, P, 4]`` and the targets dict
    ``{"labels" [B, P] (background = num_classes), "boxes" [B, P, 4], "positive" [B, P]}``."""
    positive = a["positive"]
    num_queries = min(num_queries, positive.shape[1])
    # Positives score 2 + u, negatives u (u uniform): top-k keeps every positive up to the budget,
    # chosen at random beyond it, and fills the rest with random negatives.
    score = positive.to(a["anchors"].dtype) * 2 + torch.rand(positive.shape, device=positive.device,
                                                             dtype=a["anchors"].dtype)
    index = score.topk(num_queries, dim=1).indices
    anchors = a["anchors"].detach().gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    reference = inverse_sigmoid(anchors, DINO_EPS)
    content = aux_pos_trans_norm(aux_pos_trans(proposal_pos_embed(reference, num_pos_feats)))
    targets = {"labels": a["labels"].gather(1, index), "positive": positive.gather(1, index),
               "boxes": a["boxes"].gather(1, index.unsqueeze(-1).expand(-1, -1, 4))}
    return content, reference, targets
