"""Deformable DETR's transformer: deformable encoder and decoder on :class:`detr_ops.MSDeformAttn`.

Module names follow the original (``level_embed``, ``reference_points``, ``encoder.layers.N.
self_attn.sampling_offsets``, ``decoder.layers.N.cross_attn``, ``enc_output``, ``pos_trans`` ...).
Options: iterative box refinement (the decoder gets ``bbox_embed``: each layer refines the previous
layer's boxes) and two-stage (the encoder proposes boxes, the top-k become the decoder's queries).
The MSDA module class comes from :mod:`detr_ops.models.ops_switch`, so ``ops="reference"`` runs the
same parameters through the grid_sample reference.
"""
import math

import torch
from torch import nn

from detr_ops.models import ops_switch
from detr_ops.models.transformer import activation_fn, clones, with_pos


def inverse_sigmoid(x, eps=1e-5):
    # Deformable DETR's clamp(0, 1) then clamp(min=eps) on the numerator, written as one clamp(eps, 1):
    # the same values and the same gradient mask (eps <= x <= 1, for eps > 0), and no Clip-after-Clip
    # pair, which onnxscript 0.7's optimizer fuses into a Clip whose bounds are left out of the graph.
    return torch.log(x.clamp(min=eps, max=1.0) / (1 - x.clamp(min=0.0, max=1.0)).clamp(min=eps))


def proposal_pos_embed(proposals, num_pos_feats):
    """Sine embedding of each proposal's 4 logit coordinates: ``[B, K, 4] -> [B, K, 4 * num_pos_feats]``
    (temperature 10000, scale 2*pi; Deformable DETR's and Co-DETR's ``get_proposal_pos_embed``)."""
    dim_t = torch.arange(num_pos_feats, dtype=proposals.dtype, device=proposals.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = proposals.sigmoid()[:, :, :, None] * (2 * math.pi) / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)


def encoder_output_proposals(memory, padding_mask, spatial_shapes_list):
    """One proposal box per encoder pixel (its centre, a size growing with the level), in logit
    space; padded pixels and proposals too close to the border get +inf so top-k skips them.
    Returns the memory with those pixels zeroed, and the proposals ``[B, S, 4]`` (Deformable DETR's
    and DINO's ``gen_encoder_output_proposals`` without the projection)."""
    n = memory.shape[0]
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes_list):
        mask = padding_mask[:, start:start + h * w].view(n, h, w)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys = torch.arange(h, dtype=memory.dtype, device=memory.device)  # linspace(0, h - 1, h), export-friendly
        xs = torch.arange(w, dtype=memory.dtype, device=memory.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)
        scale = torch.stack([valid_w, valid_h], -1).view(n, 1, 1, 2).to(memory.dtype)
        grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
        start += h * w
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
    proposals = proposals.masked_fill(~valid, float("inf"))
    out = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
    return out, proposals


def valid_ratio(mask):
    """``[B, 2]``: the unpadded fraction (width, height) of each image of a ``[B, H, W]`` padding mask."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)
    valid_w = (~mask[:, 0, :]).sum(1)
    return torch.stack([valid_w / w, valid_h / h], -1)


def flatten_levels(srcs, masks, pos_embeds, level_embed):
    """The multi-scale inputs as the encoder and MSDA take them (Deformable DETR and DINO alike).

    srcs / masks / pos_embeds: one ``[B, C, H, W]`` / ``[B, H, W]`` / ``[B, C, H, W]`` per level;
    level_embed ``[L, C]``. Returns a dict: ``src``, ``mask``, ``pos`` (``[B, S, C]`` / ``[B, S]`` /
    ``[B, S, C]``, levels concatenated), ``shapes`` (the ``(H, W)`` Python ints), ``spatial_shapes``
    and ``level_start_index`` (their device tensors), ``valid_ratios [B, L, 2]``.
    """
    src_flat, mask_flat, pos_flat, shapes = [], [], [], []
    for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
        shapes.append(tuple(src.shape[-2:]))
        src_flat.append(src.flatten(2).transpose(1, 2))
        mask_flat.append(mask.flatten(1))
        pos_flat.append(pos.flatten(2).transpose(1, 2) + level_embed[lvl].view(1, 1, -1))
    src_flat = torch.cat(src_flat, 1)
    # Shapes are static Python ints from the tensors' sizes: the device tensors MSDA needs are
    # built from them, and loops use the ints, so nothing reads a device tensor back.
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=src_flat.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1).to(src_flat.dtype)
    return {"src": src_flat, "mask": torch.cat(mask_flat, 1), "pos": torch.cat(pos_flat, 1), "shapes": shapes,
            "spatial_shapes": spatial_shapes, "level_start_index": level_start_index, "valid_ratios": valid_ratios}


class DeformableTransformerEncoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4,
                 ops="detr_ops"):
        super().__init__()
        self.self_attn = ops_switch.msda_class(ops)(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        attn = self.self_attn(with_pos(src, pos), reference_points, src, spatial_shapes, level_start_index,
                              padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes_list, valid_ratios, dtype):
        """Each pixel centre of each level, in the padded image's [0, 1] coordinates, then seen from
        every level: ``[B, S, L, 2]``. ``spatial_shapes_list`` is Python ints (no device reads)."""
        device = valid_ratios.device
        refs = []
        for lvl, (h, w) in enumerate(spatial_shapes_list):
            # arange + 0.5 (the values of linspace(0.5, h - 0.5, h)) keeps h symbolic under torch.export.
            ys = torch.arange(h, dtype=dtype, device=device) + 0.5
            xs = torch.arange(w, dtype=dtype, device=device) + 0.5
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            # Normalised by the valid (unpadded) extent of each image...
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        # ... and scaled back by each level's valid ratio, so a point lands on the same image spot.
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, spatial_shapes_list, level_start_index, valid_ratios, pos, padding_mask):
        reference_points = self.get_reference_points(spatial_shapes_list, valid_ratios, src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableTransformerDecoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4,
                 ops="detr_ops"):
        super().__init__()
        self.cross_attn = ops_switch.msda_class(ops)(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask,
                self_attn_mask=None):
        """``self_attn_mask [Q, Q]`` (True: may not attend) separates training-only query segments
        (:mod:`detr_ops.models.query_layout`)."""
        q = k = with_pos(tgt, query_pos)
        attn = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1), attn_mask=self_attn_mask,
                              need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn.transpose(0, 1)))
        cross = self.cross_attn(with_pos(tgt, query_pos), reference_points, src, spatial_shapes, level_start_index,
                                padding_mask)
        tgt = self.norm1(tgt + self.dropout1(cross))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableTransformerDecoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        # Set by DeformableDETR: per-layer box heads (box refinement) and class heads (two-stage).
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, reference_points, src, spatial_shapes, level_start_index, valid_ratios, query_pos,
                padding_mask, self_attn_mask=None):
        """Returns every layer's output ``[layers, B, Q, C]`` and the reference points each layer's
        boxes are predicted relative to ``[layers, B, Q, 2 or 4]``."""
        output = tgt
        outputs, references = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, src, spatial_shapes, level_start_index, padding_mask,
                           self_attn_mask)
            if self.bbox_embed is not None:
                # Iterative refinement: this layer's box head corrects the boxes in logit space; the
                # next layer samples around the corrected boxes, without gradient through them.
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_ref = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]],
                                        -1).sigmoid()
                reference_points = new_ref.detach()
            outputs.append(output)
            references.append(reference_points)
        return torch.stack(outputs), torch.stack(references)


class DeformableTransformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, activation="relu", num_feature_levels=4, dec_n_points=4, enc_n_points=4,
                 two_stage=False, two_stage_num_proposals=300, ops="detr_ops"):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.encoder = DeformableTransformerEncoder(
            DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels,
                                              nhead, enc_n_points, ops), num_encoder_layers)
        self.decoder = DeformableTransformerDecoder(
            DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels,
                                              nhead, dec_n_points, ops), num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # The blanket Xavier above overwrote MSDA's structured offset init: restore it.
        for m in self.modules():
            if isinstance(m, ops_switch.MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals):
        return proposal_pos_embed(proposals, self.d_model // 2)

    def gen_encoder_output_proposals(self, memory, padding_mask, spatial_shapes_list):
        out, proposals = encoder_output_proposals(memory, padding_mask, spatial_shapes_list)
        return self.enc_output_norm(self.enc_output(out)), proposals

    def forward(self, srcs, masks, pos_embeds, query_embed=None, self_attn_mask=None, num_proposals=None):
        """srcs / masks / pos_embeds: one ``[B, C, H, W]`` / ``[B, H, W]`` / ``[B, C, H, W]`` per level.
        ``self_attn_mask`` separates training-only query segments; ``num_proposals`` (two-stage)
        overrides how many top-scoring proposals become queries (H-DETR's extra queries in training).

        Returns decoder outputs ``[layers, B, Q, C]``, initial references ``[B, Q, 2 or 4]``, per-layer
        references, and (two-stage) the encoder's class logits and box logits per pixel.
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("query_embed is required unless two_stage=True")
        flat = flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        mask_flat, shapes, spatial_shapes = flat["mask"], flat["shapes"], flat["spatial_shapes"]
        level_start_index, valid_ratios = flat["level_start_index"], flat["valid_ratios"]
        memory = self.encoder(flat["src"], spatial_shapes, shapes, level_start_index, valid_ratios, flat["pos"],
                              mask_flat)

        bs, _, c = memory.shape
        enc_class = enc_coord = None
        if self.two_stage:
            output_memory, proposals = self.gen_encoder_output_proposals(memory, mask_flat, shapes)
            # The extra (last) class / box heads score and regress every encoder pixel's proposal.
            enc_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
            enc_coord = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + proposals
            topk = torch.topk(enc_class[..., 0], num_proposals or self.two_stage_num_proposals, dim=1)[1]
            topk_coords = torch.gather(enc_coord, 1, topk.unsqueeze(-1).expand(-1, -1, 4)).detach()
            reference_points = topk_coords.sigmoid()
            pos_trans = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords)))
            query_pos, tgt = torch.split(pos_trans, c, dim=2)
        else:
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            # repeat, not expand: a stride-0 batch reaching nn.Linear makes torch.export's matmul
            # decomposition (run_decompositions) specialise the batch size.
            query_pos = query_pos.unsqueeze(0).repeat(bs, 1, 1)
            tgt = tgt.unsqueeze(0).repeat(bs, 1, 1)
            reference_points = self.reference_points(query_pos).sigmoid()
        init_reference = reference_points
        hs, inter_references = self.decoder(tgt, reference_points, memory, spatial_shapes, level_start_index,
                                            valid_ratios, query_pos, mask_flat, self_attn_mask)
        return hs, init_reference, inter_references, enc_class, enc_coord
