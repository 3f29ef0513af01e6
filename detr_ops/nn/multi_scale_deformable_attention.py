"""``MultiScaleDeformableAttention``: mmcv's module (``mmcv.ops.multi_scale_deform_attn``) on detr_ops.

mmdetection's Deformable DETR, DINO, Co-DETR, DDQ, ... build their attention from mmcv's
``MultiScaleDeformableAttention``. This module has its constructor arguments, its forward
signature (``query, key, value, identity, query_pos, key_padding_mask, reference_points,
spatial_shapes, level_start_index``, ``batch_first`` layouts, the deprecated ``residual=`` alias of
``identity``), its parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``,
``output_proj``: checkpoints load unchanged) and its initialisation, and computes the sampling with
``detr_ops.ms_deform_attn`` on every device (mmcv runs its CUDA kernel on GPUs and the
``grid_sample`` loop elsewhere).

Differences, none of which changes a result: it is a plain ``nn.Module`` (mmengine's
``BaseModule`` is not needed; ``init_cfg`` is kept as an attribute and ``init_weights()`` exists
under mmcv's name); no host-synchronising ``assert`` on the spatial shapes (the op checks them on
CPU); no warning for a head dim that is not a power of 2 (every detr_ops kernel takes any head
dim at full speed); ``embed_dims * value_proj_ratio`` not divisible by ``num_heads`` is an error
at construction instead of at the first forward.
"""
import math
import warnings
from typing import Optional

import torch
from torch import nn

from detr_ops.ops.ms_deform_attn import ms_deform_attn


class MultiScaleDeformableAttention(nn.Module):
    """mmcv's multi-scale deformable attention.

    Args (mmcv's, same defaults):
        embed_dims: channels C of query and value.
        num_heads: heads M.
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
        im2col_step: accepted for compatibility; never constrains the batch size.
        dropout: dropout on the output before the residual is added.
        batch_first: inputs ``[bs, n, C]`` when True, ``[n, bs, C]`` when False (mmcv's default).
        norm_cfg, init_cfg: kept as attributes (mmcv stores them too; neither changes the module).
        value_proj_ratio: ``value_proj`` maps C to ``int(C * value_proj_ratio)`` channels.
        backend: detr_ops backend, ``"auto"`` / ``"native"`` / ``"triton"`` (keyword only).
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 im2col_step: int = 64, dropout: float = 0.1, batch_first: bool = False,
                 norm_cfg: Optional[dict] = None, init_cfg=None, value_proj_ratio: float = 1.0, *,
                 backend: str = "auto"):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims must be divisible by num_heads, but got {embed_dims} and {num_heads}")
        value_proj_size = int(embed_dims * value_proj_ratio)
        if value_proj_size % num_heads != 0 or value_proj_size <= 0:
            raise ValueError(f"int(embed_dims * value_proj_ratio) = {value_proj_size} must be a positive multiple "
                             f"of num_heads = {num_heads}")
        self.norm_cfg = norm_cfg
        self.init_cfg = init_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's initialisation: offsets with zero weight and a bias putting head h's points on a ray
        at angle 2*pi*h/M, the larger coordinate 1, 2, ..., P; uniform attention (zero weight and
        bias); Xavier-uniform projections with zero bias."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        device = self.sampling_offsets.weight.device
        thetas = torch.arange(self.num_heads, dtype=torch.float32, device=device) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32, device=device).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)
        self._is_init = True

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None, value: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None, query_pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None, reference_points: Optional[torch.Tensor] = None,
                spatial_shapes: Optional[torch.Tensor] = None, level_start_index: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        """mmcv's forward. ``query [nq, bs, C]`` (``[bs, nq, C]`` with ``batch_first``); ``value``
        ``[nv, bs, C]`` (default: ``query``; ``key`` is accepted and unused, as in mmcv);
        ``identity`` is added to the output (default: ``query`` before ``query_pos`` is added);
        ``key_padding_mask [bs, nv]`` True at padding; ``reference_points [bs, nq, L, 2]`` (x, y in
        [0, 1]) or ``[bs, nq, L, 4]`` (boxes); ``spatial_shapes [L, 2]`` (H, W);
        ``level_start_index [L]``. Returns the query's layout and shape."""
        if "residual" in kwargs:
            # mmcv's deprecated_api_warning({'residual': 'identity'})
            if identity is not None:
                raise TypeError("pass identity or the deprecated residual, not both")
            warnings.warn('"residual" is deprecated in MultiScaleDeformableAttention, please use "identity" instead',
                          DeprecationWarning, stacklevel=2)
            identity = kwargs.pop("residual")
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        if reference_points is None or spatial_shapes is None or level_start_index is None:
            raise ValueError("reference_points, spatial_shapes and level_start_index are required")
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, M, -1)
        sampling_offsets = self.sampling_offsets(query).view(bs, num_query, M, L, P, 2)
        attention_weights = self.attention_weights(query).view(bs, num_query, M, L * P).softmax(-1)
        attention_weights = attention_weights.view(bs, num_query, M, L, P)
        if reference_points.shape[-1] == 2:
            # Offsets in pixels of each level: divide by (W, H).
            offset_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            sampling_locations = (reference_points[:, :, None, :, None, :]
                                  + sampling_offsets / offset_normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            # Offsets relative to the reference box: P points span half its size each way.
            sampling_locations = (reference_points[:, :, None, :, None, :2]
                                  + sampling_offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"Last dim of reference_points must be 2 or 4, but get {reference_points.shape[-1]} "
                             "instead.")
        output = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                self.im2col_step, backend=self.backend)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity
