"""Sine position encoding of a feature map from its padding mask (DETR / Deformable DETR)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Encodes each pixel's (y, x) as sines and cosines at ``num_pos_feats`` frequencies per axis.

    Positions are cumulative counts over the non-padded pixels, so the padding of a batch does not
    shift the encoding of an image. With ``normalize`` they are scaled to ``[0, scale]`` by the
    image's own valid extent. ``offset`` is subtracted before normalising: DETR uses 0, Deformable
    DETR -0.5 (pixel centres). Output ``[B, 2 * num_pos_feats, H, W]`` (y features first).
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None, offset=0.0):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, mask):
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        # Interleave sin (even frequencies) and cos (odd) per axis, as the originals do.
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
