"""DINO's deformable transformer: Deformable DETR's encoder, mixed query selection, and a decoder
whose positional queries come from the current reference boxes (``ref_point_head``), with "look
forward twice" box refinement.

Module names are those of IDEA-Research/DINO ``models/dino/deformable_transformer.py`` (R50 4-scale):
``level_embed``, ``tgt_embed``, ``enc_output``, ``enc_output_norm``, ``enc_out_class_embed``,
``enc_out_bbox_embed.layers.N``, ``encoder.layers.N.self_attn.*``, ``decoder.layers.N.{self_attn,
cross_attn, norm1..3, linear1, linear2}``, ``decoder.norm``, ``decoder.ref_point_head.layers.{0,1}``.

The work is split in :meth:`DINOTransformer.encode` and :meth:`DINOTransformer.decode` so the
model can run training-only branches between them (the Co-DETR head reads the encoder memory and
adds queries to the decoder).
"""
import math

import torch
from torch import nn

from detr_ops.models import ops_switch
from detr_ops.models.deformable_transformer import (DeformableTransformerDecoderLayer, DeformableTransformerEncoder,
                                                    DeformableTransformerEncoderLayer, encoder_output_proposals,
                                                    flatten_levels, inverse_sigmoid)
from detr_ops.models.denoising import DINO_EPS
from detr_ops.models.mlp import MLP
from detr_ops.models.transformer import clones


def gen_sineembed_for_position(pos, num_feats):
    """Sine embedding of normalised boxes ``[B, Q, 4]`` -> ``[B, Q, 4 * num_feats]`` in DINO's order
    (y, x, w, h), temperature 10000, scale 2*pi. DINO hard-codes ``num_feats`` = 128 (d_model 256);
    it is ``d_model // 2`` here so the small configurations work too."""
    dim_t = torch.arange(num_feats, dtype=pos.dtype, device=pos.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    parts = []
    for i in (1, 0, 2, 3):
        p = pos[:, :, i, None] * (2 * math.pi) / dim_t
        parts.append(torch.stack((p[:, :, 0::2].sin(), p[:, :, 1::2].cos()), dim=3).flatten(2))
    return torch.cat(parts, dim=2)


class DINODecoder(nn.Module):
    def __init__(self, layer, num_layers, d_model):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        self.d_model = d_model
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        # Set by DINO: the per-layer box heads the decoder refines its references with (shared
        # with the model's prediction heads, as in DINO), and the class heads.
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, refpoints_unsigmoid, memory, spatial_shapes, level_start_index, valid_ratios,
                padding_mask, self_attn_mask=None):
        """Returns the normed outputs of every layer ``[layers, B, Q, C]`` and ``layers + 1``
        reference boxes ``[B, Q, 4]``: the initial ones, then each layer's refined boxes *with*
        their gradient (look forward twice: layer i's prediction is made relative to layer i-1's
        un-detached boxes, so its loss also trains layer i-1's box head); the next layer itself
        samples around the detached boxes."""
        output = tgt
        reference_points = refpoints_unsigmoid.sigmoid()
        references = [reference_points]
        intermediate = []
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        for lid, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * ratios
            query_pos = self.ref_point_head(gen_sineembed_for_position(ref_input[:, :, 0, :], self.d_model // 2))
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, level_start_index, padding_mask,
                           self_attn_mask)
            # The box head sees the un-normed output here and the normed one in the predictions:
            # DINO's arithmetic, kept.
            delta = self.bbox_embed[lid](output)
            new_reference = (delta + inverse_sigmoid(reference_points, DINO_EPS)).sigmoid()
            reference_points = new_reference.detach()
            references.append(new_reference)
            intermediate.append(self.norm(output))
        return torch.stack(intermediate), references


class DINOTransformer(nn.Module):
    """Args (DINO's names): ``num_queries`` main queries selected from the encoder; ``num_tgt`` rows
    of learnable content queries (``tgt_embed``: num_queries, or more for the one-to-many options)."""

    def __init__(self, d_model=256, nhead=8, num_queries=900, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.0, activation="relu", num_feature_levels=4, enc_n_points=4,
                 dec_n_points=4, num_tgt=None, ops="detr_ops"):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.encoder = DeformableTransformerEncoder(
            DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels,
                                              nhead, enc_n_points, ops), num_encoder_layers)
        self.decoder = DINODecoder(
            DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels,
                                              nhead, dec_n_points, ops), num_decoder_layers, d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_tgt or num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        # Set by DINO (copies of its class / box heads, two_stage_*_embed_share=False).
        self.enc_out_class_embed = None
        self.enc_out_bbox_embed = None
        self._reset_parameters()

    def _reset_parameters(self):
        # As DINO: Xavier on every matrix (tgt_embed included: it runs after tgt_embed's normal
        # init), then MSDA's structured init restored, level embeddings normal.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, ops_switch.MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def encode(self, srcs, masks, pos_embeds):
        """Flattens the levels and runs the encoder. Returns a dict: ``memory [B, S, C]``,
        ``mask [B, S]``, ``spatial_shapes`` (tensor and ``shapes`` as Python ints),
        ``level_start_index``, ``valid_ratios [B, L, 2]``."""
        flat = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        memory = self.encoder(flat["src"], flat["spatial_shapes"], flat["shapes"], flat["level_start_index"],
                              flat["valid_ratios"], flat["pos"], flat["mask"])
        return {"memory": memory, "mask": flat["mask"], "spatial_shapes": flat["spatial_shapes"],
                "shapes": flat["shapes"], "level_start_index": flat["level_start_index"],
                "valid_ratios": flat["valid_ratios"]}

    def select(self, enc, num_selected):
        """Mixed query selection: the top ``num_selected`` encoder proposals by their best class
        score. Returns the selected box logits (detached: the decoder's initial references) and the
        intermediate (encoder) predictions of the first ``num_queries`` of them for the loss."""
        output_memory, proposals = encoder_output_proposals(enc["memory"], enc["mask"], enc["shapes"])
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_class = self.enc_out_class_embed(output_memory)
        enc_coord = self.enc_out_bbox_embed(output_memory) + proposals
        topk = torch.topk(enc_class.max(-1)[0], num_selected, dim=1)[1]
        coords = torch.gather(enc_coord, 1, topk.unsqueeze(-1).expand(-1, -1, 4))
        q = self.num_queries
        selected_memory = torch.gather(output_memory, 1, topk[:, :q].unsqueeze(-1).expand(-1, -1, self.d_model))
        interm = {"pred_logits": self.enc_out_class_embed(selected_memory), "pred_boxes": coords[:, :q].sigmoid()}
        return coords.detach(), interm

    def decode(self, enc, content, refpoints_unsigmoid, self_attn_mask=None):
        return self.decoder(content, refpoints_unsigmoid, enc["memory"], enc["spatial_shapes"],
                            enc["level_start_index"], enc["valid_ratios"], enc["mask"], self_attn_mask)
