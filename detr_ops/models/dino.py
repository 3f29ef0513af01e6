"""DINO (Zhang et al., 2023): Deformable DETR with contrastive denoising, mixed query selection and
"look forward twice", plus the training-only one-to-many options (H-DETR's hybrid branch, Group
DETR's query groups) and a Co-DETR-style auxiliary ATSS head.

Keys as in IDEA-Research/DINO's R50 4-scale checkpoints: ``backbone.0.body.*``, ``input_proj.N.{0,1}``,
``label_enc`` (``dn_labelbook_size + 1`` rows), ``class_embed.N`` / ``bbox_embed.N.layers.M`` (one
head shared by the decoder layers, listed per layer as DINO lists it; the same modules under
``transformer.decoder.{class,bbox}_embed``), ``transformer.enc_out_{class,bbox}_embed`` (own copies)
and the transformer's keys (:mod:`detr_ops.models.dino_transformer`). The Co-DETR head adds
``bbox_head.0.*`` and ``transformer.aux_pos_trans.0`` / ``aux_pos_trans_norm.0`` (Co-DINO's names).

``forward(images, mask, targets=None)``: in training mode with targets, the training-only query
segments run (:mod:`detr_ops.models.query_layout`); in eval mode (or without targets) only the
``num_queries`` main queries, as the originals infer.
"""
import copy
import math

import torch
from torch import nn

from detr_ops.models import co_head, denoising, ops_switch
from detr_ops.models.backbone import Backbone, Joiner
from detr_ops.models.deformable_detr import feature_levels, init_input_projections, input_projections
from detr_ops.models.deformable_transformer import inverse_sigmoid
from detr_ops.models.dino_transformer import DINOTransformer
from detr_ops.models.mlp import MLP
from detr_ops.models.position_encoding import PositionEmbeddingSine
from detr_ops.models.query_layout import QueryLayout


class DINO(nn.Module):
    def __init__(self, backbone, transformer, num_classes, num_queries, num_feature_levels, dn_number=100,
                 dn_label_noise_ratio=0.5, dn_box_noise_scale=1.0, dn_labelbook_size=None, max_targets=100,
                 one_to_many_queries=0, groups=1, co_head=None, co_queries=0, gn_groups=32, ops="detr_ops"):
        super().__init__()
        hidden = transformer.d_model
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.transformer = transformer
        self.num_feature_levels = num_feature_levels
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.max_targets = max_targets
        self.one_to_many_queries = one_to_many_queries
        self.groups = groups
        self.co_queries = co_queries
        self.iou_fn = ops_switch.box_iou(ops)
        self.label_enc = nn.Embedding((dn_labelbook_size or num_classes) + 1, hidden)
        self.input_proj = input_projections(backbone.num_channels, num_feature_levels, hidden, gn_groups)
        self.backbone = backbone

        class_embed = nn.Linear(hidden, num_classes)
        bbox_embed = MLP(hidden, hidden, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        num_layers = transformer.decoder.num_layers
        # dec_pred_{class,bbox}_embed_share=True: one module, listed once per decoder layer.
        self.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_layers))
        self.class_embed = nn.ModuleList(class_embed for _ in range(num_layers))
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        # two_stage_{bbox,class}_embed_share=False: the encoder's heads are copies.
        self.transformer.enc_out_bbox_embed = copy.deepcopy(bbox_embed)
        self.transformer.enc_out_class_embed = copy.deepcopy(class_embed)
        init_input_projections(self.input_proj)
        if co_head is not None:
            self.bbox_head = nn.ModuleList([co_head])
            self.transformer.aux_pos_trans = nn.ModuleList([nn.Linear(2 * hidden, hidden)])
            self.transformer.aux_pos_trans_norm = nn.ModuleList([nn.LayerNorm(hidden)])

    @property
    def has_co_head(self):
        return hasattr(self, "bbox_head")

    def _levels(self, images, mask):
        return feature_levels(self.backbone, self.input_proj, images, mask)

    def layout(self, training, num_tokens):
        if not training:
            return QueryLayout(self.num_queries)
        return QueryLayout(self.num_queries, dn_groups=denoising.num_groups(self.dn_number, self.max_targets)
                           if self.dn_number > 0 else 0, dn_group_size=self.max_targets,
                           one_to_many=self.one_to_many_queries, groups=self.groups,
                           co_queries=min(self.co_queries, num_tokens) if self.has_co_head else 0)

    def forward(self, images, mask, targets=None):
        srcs, masks, pos = self._levels(images, mask)
        enc = self.transformer.encode(srcs, masks, pos)
        training = self.training and targets is not None
        layout = self.layout(training, enc["memory"].shape[1])
        b = images.shape[0]
        q = self.num_queries
        selected, interm = self.transformer.select(enc, q + layout.one_to_many)
        tgt = self.transformer.tgt_embed.weight
        content, refs = [], []
        out = {}
        if layout.num_dn or layout.co_queries:
            # Fixed target slots per image: every shape below is a constant of the configuration.
            labels, boxes, valid = denoising.pad_targets_fixed(targets, self.max_targets, images.device,
                                                               images.dtype)
        if layout.num_dn:
            dn_content, dn_ref, groups = denoising.cdn_queries(labels, boxes, valid, self.dn_number,
                                                                self.dn_label_noise_ratio, self.dn_box_noise_scale,
                                                                self.num_classes, self.label_enc)
            content.append(dn_content)
            refs.append(dn_ref)
        # Main queries: learnable content, the top-q proposals as reference boxes (mixed selection).
        content.append(tgt[:q].unsqueeze(0).expand(b, -1, -1))
        refs.append(selected[:, :q])
        if layout.groups > 1:
            # Group DETR: every group has its own content queries on the same selected boxes.
            content.append(tgt[q:layout.groups * q].unsqueeze(0).expand(b, -1, -1))
            refs.append(selected[:, :q].repeat(1, layout.groups - 1, 1))
        if layout.one_to_many:
            # H-DETR: the next proposals in score order, with their own content queries.
            content.append(tgt[q:q + layout.one_to_many].unsqueeze(0).expand(b, -1, -1))
            refs.append(selected[:, q:])
        if layout.co_queries:
            head = self.bbox_head[0]
            # Image width and height in level-0 cells: centre distances in (scaled) pixels.
            h0, w0 = enc["shapes"][0]
            aspect = enc["valid_ratios"][:, 0] * enc["valid_ratios"].new_tensor([w0, h0])
            head_out = head(co_head.memory_to_maps(enc["memory"], enc["shapes"]))
            assigned = co_head.assign(head, head_out, labels, boxes, valid, enc["shapes"], enc["valid_ratios"],
                                      self.iou_fn, aspect)
            co_content, co_ref, co_targets = co_head.positive_queries(
                assigned, layout.co_queries, self.transformer.aux_pos_trans[0], self.transformer.aux_pos_trans_norm[0],
                self.transformer.d_model // 2)
            content.append(co_content)
            refs.append(co_ref)
            out["atss_outputs"] = assigned
        hs, references = self.transformer.decode(enc, torch.cat(content, 1), torch.cat(refs, 1),
                                                 layout.attention_mask(images.device))
        # Keeps label_enc in every backward (DINO does the same), so DDP sees no unused parameter.
        hs = hs + self.label_enc.weight[0, 0] * 0.0
        logits, coords = [], []
        for lid in range(hs.shape[0]):
            logits.append(self.class_embed[lid](hs[lid]))
            reference = inverse_sigmoid(references[lid], denoising.DINO_EPS)
            coords.append((self.bbox_embed[lid](hs[lid]) + reference).sigmoid())
        logits, coords = torch.stack(logits), torch.stack(coords)

        def segment(sl):
            pl, pb = logits[:, :, sl], coords[:, :, sl]
            return {"pred_logits": pl[-1], "pred_boxes": pb[-1],
                    "aux_outputs": [{"pred_logits": a, "pred_boxes": c} for a, c in zip(pl[:-1], pb[:-1])]}

        s = layout.slices()
        out.update(segment(s["main"]))
        out["interm_outputs"] = interm
        if layout.groups > 1:
            out["query_groups"] = layout.groups
        if layout.num_dn:
            out["dn_outputs"] = dict(segment(s["dn"]), groups=groups, max_targets=self.max_targets)
        if layout.one_to_many:
            out["one_to_many_outputs"] = segment(s["one_to_many"])
        if layout.co_queries:
            out["co_outputs"] = dict(segment(s["co"]), targets=co_targets)
        return out


def build_dino(num_classes, backbone="resnet50", hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6,
               dim_feedforward=2048, dropout=0.0, num_queries=900, num_feature_levels=4, enc_n_points=4,
               dec_n_points=4, dn_number=100, dn_label_noise_ratio=0.5, dn_box_noise_scale=1.0, dn_labelbook_size=None,
               max_targets=100, one_to_many_queries=0, groups=1, with_co_head=False, co_queries=300,
               co_anchor_scale=8.0, co_stacked_convs=1, pretrained_backbone=True, gn_groups=32, ops="detr_ops"):
    """DINO with the R50 4-scale defaults of ``config/DINO/DINO_4scale.py`` (900 queries, 6+6 layers,
    FFN 2048, no dropout, sine positions at temperature 20, dn_number 100, label noise 0.5, box noise
    1.0 as ``scripts/DINO_train.sh`` sets it)."""
    if groups > 1 and one_to_many_queries:
        raise ValueError("choose one of groups > 1 (Group DETR) and one_to_many_queries > 0 (H-DETR), not both")
    body = Backbone(backbone, return_interm_layers=num_feature_levels > 1, freeze_stem=pretrained_backbone)
    # DINO's PositionEmbeddingSineHW: temperature 20 on both axes, normalised, no half-pixel offset.
    joiner = Joiner(body, PositionEmbeddingSine(hidden_dim // 2, temperature=20, normalize=True))
    transformer = DINOTransformer(hidden_dim, nheads, num_queries, enc_layers, dec_layers, dim_feedforward, dropout,
                                  num_feature_levels=num_feature_levels, enc_n_points=enc_n_points,
                                  dec_n_points=dec_n_points, num_tgt=num_queries * groups + one_to_many_queries,
                                  ops=ops)
    head = None
    if with_co_head:
        head = co_head_module(num_classes, hidden_dim, num_feature_levels, co_stacked_convs, gn_groups, co_anchor_scale)
    return DINO(joiner, transformer, num_classes, num_queries, num_feature_levels, dn_number, dn_label_noise_ratio,
                dn_box_noise_scale, dn_labelbook_size, max_targets, one_to_many_queries, groups, head,
                co_queries, gn_groups, ops)


def co_head_module(num_classes, hidden_dim, num_levels, stacked_convs, gn_groups, anchor_scale):
    return co_head.ATSSHead(num_classes, hidden_dim, num_levels, stacked_convs, gn_groups, anchor_scale)
