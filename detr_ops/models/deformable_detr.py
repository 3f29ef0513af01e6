"""Deformable DETR: multi-scale ResNet features + deformable transformer + per-layer heads.

Keys as in the original checkpoints: ``backbone.0.body.*``, ``input_proj.N.{0,1}`` (conv + GroupNorm
per level), ``query_embed`` (``2 * hidden``: positional half and content half), ``transformer.*``,
``class_embed.N`` / ``bbox_embed.N.layers.M`` for each decoder layer (one shared head repeated when
boxes are not refined, as the original lists it), and ``transformer.decoder.bbox_embed.N`` /
``class_embed.N`` for the refinement / two-stage options. Classification is sigmoid (focal loss):
``num_classes`` logits, no "no object" class.

Training-only one-to-many options (inference uses the ``num_queries`` one-to-one queries alone):
``one_to_many_queries`` (H-DETR's hybrid branch: that many extra queries, scored against targets
repeated k times by the criterion) and ``groups`` (Group DETR: K groups of ``num_queries``, each
matched one-to-one). Both add rows to ``query_embed`` (or proposals, two-stage) and a
self-attention mask that keeps the segments apart (:mod:`detr_ops.models.query_layout`).
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from detr_ops.models.backbone import Backbone, Joiner
from detr_ops.models.deformable_transformer import DeformableTransformer, inverse_sigmoid
from detr_ops.models.mlp import MLP
from detr_ops.models.position_encoding import PositionEmbeddingSine
from detr_ops.models.query_layout import QueryLayout


def input_projections(backbone_channels, num_feature_levels, hidden, gn_groups):
    """The encoder's inputs (Deformable DETR and DINO alike): one 1x1 conv + GroupNorm per backbone
    level, then stride-2 3x3 convs on the last for the levels the backbone does not have."""
    projs = [nn.Sequential(nn.Conv2d(c, hidden, 1), nn.GroupNorm(gn_groups, hidden))
             for c in backbone_channels[:num_feature_levels]]
    cin = backbone_channels[-1]
    for _ in range(num_feature_levels - len(projs)):
        projs.append(nn.Sequential(nn.Conv2d(cin, hidden, 3, stride=2, padding=1), nn.GroupNorm(gn_groups, hidden)))
        cin = hidden
    return nn.ModuleList(projs)


def init_input_projections(input_proj):
    """The originals' init of the projections' convs (each model calls it where its original does, so
    the random stream, and a seeded model's weights, stay the original's)."""
    for proj in input_proj:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)


def feature_levels(backbone, input_proj, images, mask):
    """``(srcs, masks, pos)``, one ``[B, C, H, W]`` / ``[B, H, W]`` / ``[B, C, H, W]`` per level of
    ``input_proj``: the backbone's levels projected, then the extra levels (each from the previous,
    the first from the backbone's last feature map) with their masks and position encodings."""
    features, pos = backbone(images, mask)
    srcs, masks = [], []
    for lvl, (feat, m) in enumerate(features):
        srcs.append(input_proj[lvl](feat))
        masks.append(m)
    for lvl in range(len(srcs), len(input_proj)):
        src = input_proj[lvl](features[-1][0] if lvl == len(features) else srcs[-1])
        m = F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
        srcs.append(src)
        masks.append(m)
        pos.append(backbone[1](m).to(src.dtype))
    return srcs, masks, pos


class DeformableDETR(nn.Module):
    def __init__(self, backbone, transformer, num_classes, num_queries, num_feature_levels, aux_loss=True,
                 with_box_refine=False, two_stage=False, gn_groups=32, one_to_many_queries=0, groups=1):
        super().__init__()
        if groups > 1 and one_to_many_queries:
            raise ValueError("choose one of groups > 1 (Group DETR) and one_to_many_queries > 0 (H-DETR), not both")
        if groups > 1 and two_stage:
            raise ValueError("groups > 1 needs learnable queries; two-stage queries come from the proposals alone "
                             "(every group would be the same)")
        hidden = transformer.d_model
        self.num_queries = num_queries
        self.one_to_many_queries = one_to_many_queries
        self.groups = groups
        self.transformer = transformer
        self.num_feature_levels = num_feature_levels
        class_embed = nn.Linear(hidden, num_classes)
        bbox_embed = MLP(hidden, hidden, 4, 3)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries * groups + one_to_many_queries, hidden * 2)
        self.input_proj = input_projections(backbone.num_channels, num_feature_levels, hidden, gn_groups)
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        # Classes start at a 1% prior so the focal loss is not swamped by easy negatives at step 0.
        prior_prob = 0.01
        nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        init_input_projections(self.input_proj)

        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            # Only the first layer predicts sizes from scratch: start it at small boxes (sigmoid(-2)).
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList(class_embed for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_pred))
        if two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            # Two-stage references are already boxes: the heads predict corrections, starting at 0.
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def forward(self, images, mask, targets=None):
        """Same output dict as DETR (``pred_logits`` are ``num_classes`` sigmoid logits), plus
        ``enc_outputs`` (the encoder's proposals) in two-stage mode. In training mode also
        ``one_to_many_outputs`` (H-DETR) or ``query_groups`` (Group DETR: ``pred_logits`` holds all
        groups, ``[B, K * num_queries, ...]``). ``targets`` is accepted for a uniform interface."""
        layout = QueryLayout(self.num_queries)
        if self.training:
            layout = QueryLayout(self.num_queries, one_to_many=self.one_to_many_queries, groups=self.groups)
        srcs, masks, pos = feature_levels(self.backbone, self.input_proj, images, mask)
        # Rows of query_embed: the main queries, then Group DETR's groups or H-DETR's extra queries.
        query = None if self.two_stage else self.query_embed.weight[:layout.total]
        hs, init_ref, inter_refs, enc_class, enc_coord = self.transformer(
            srcs, masks, pos, query, layout.attention_mask(images.device), layout.total)

        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_ref if lvl == 0 else inter_refs[lvl - 1])
            delta = self.bbox_embed[lvl](hs[lvl])
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:
                coord = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_embed[lvl](hs[lvl]))
            boxes.append(coord.sigmoid())

        def segment(sl):
            out = {"pred_logits": logits[-1][:, sl], "pred_boxes": boxes[-1][:, sl]}
            if self.aux_loss:
                out["aux_outputs"] = [{"pred_logits": a[:, sl], "pred_boxes": b[:, sl]}
                                      for a, b in zip(logits[:-1], boxes[:-1])]
            return out

        s = layout.slices()
        out = segment(s["main"])
        if layout.groups > 1:
            out["query_groups"] = layout.groups
        if layout.one_to_many:
            out["one_to_many_outputs"] = segment(s["one_to_many"])
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord.sigmoid()}
        return out


def build_deformable_detr(num_classes, backbone="resnet50", hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6,
                          dim_feedforward=1024, dropout=0.1, num_queries=300, num_feature_levels=4, enc_n_points=4,
                          dec_n_points=4, with_box_refine=False, two_stage=False, aux_loss=True,
                          pretrained_backbone=True, gn_groups=32, one_to_many_queries=0, groups=1, ops="detr_ops"):
    """Deformable DETR with the original defaults (R50, 4 levels, 300 queries, 4 points)."""
    body = Backbone(backbone, return_interm_layers=num_feature_levels > 1, freeze_stem=pretrained_backbone)
    joiner = Joiner(body, PositionEmbeddingSine(hidden_dim // 2, normalize=True, offset=-0.5))
    transformer = DeformableTransformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, dropout,
                                        num_feature_levels=num_feature_levels, dec_n_points=dec_n_points,
                                        enc_n_points=enc_n_points, two_stage=two_stage,
                                        two_stage_num_proposals=num_queries, ops=ops)
    return DeformableDETR(joiner, transformer, num_classes, num_queries, num_feature_levels, aux_loss,
                          with_box_refine, two_stage, gn_groups, one_to_many_queries, groups)
