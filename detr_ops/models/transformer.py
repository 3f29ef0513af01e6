"""DETR's encoder-decoder transformer (post-norm, positional encodings added at every layer).

Module names are the original's (``encoder.layers.N.self_attn``, ``linear1``, ``norm1`` ...,
``decoder.layers.N.multihead_attn``, ``decoder.norm``), attention is ``nn.MultiheadAttention``
so its ``in_proj_weight`` / ``out_proj`` keys match too. Inputs are batch-first here; the layers
transpose to the sequence-first layout ``nn.MultiheadAttention`` expects by default.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn


def clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def activation_fn(name):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"activation must be 'relu' or 'gelu', got {name!r}")


def with_pos(x, pos):
    return x if pos is None else x + pos


def _attend(attn, q, k, v, key_padding_mask=None):
    # nn.MultiheadAttention (not batch_first: the originals' layout, and its keys) on [B, L, C] inputs.
    out = attn(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), key_padding_mask=key_padding_mask,
               need_weights=False)[0]
    return out.transpose(0, 1)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)

    def forward(self, src, pos, padding_mask):
        q = k = with_pos(src, pos)
        src = self.norm1(src + self.dropout1(_attend(self.self_attn, q, k, src, padding_mask)))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)

    def forward(self, tgt, memory, memory_padding_mask, pos, query_pos):
        q = k = with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(_attend(self.self_attn, q, k, tgt)))
        cross = _attend(self.multihead_attn, with_pos(tgt, query_pos), with_pos(memory, pos), memory,
                        memory_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers

    def forward(self, src, pos, padding_mask):
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return src


class TransformerDecoder(nn.Module):
    """Returns every layer's output, each through the shared final ``norm`` (for the aux losses)."""

    def __init__(self, layer, num_layers, d_model):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, memory_padding_mask, pos, query_pos):
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_padding_mask, pos, query_pos)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation="relu"):
        super().__init__()
        self.encoder = TransformerEncoder(
            TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation), num_encoder_layers)
        self.decoder = TransformerDecoder(
            TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation), num_decoder_layers, d_model)
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos_embed):
        """src [B, C, H, W], mask [B, H, W] (True at padding), query_embed [Q, C], pos_embed like src.

        Returns the decoder outputs of every layer, ``[num_decoder_layers, B, Q, C]``, and the memory.
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(bs, -1, -1)
        # The decoder starts from zeros: the queries carry only their learned positional part.
        tgt = torch.zeros_like(query_pos)
        memory = self.encoder(src, pos_embed, mask)
        hs = self.decoder(tgt, memory, mask, pos_embed, query_pos)
        return hs, memory.transpose(1, 2).reshape(bs, c, h, w)
