"""``MSDeformAttn``: Deformable DETR's multi-scale deformable attention module on detr_ops kernels.

Parameter names, shapes and initialisation are those of Deformable DETR's
``models/ops/modules/ms_deform_attn.py`` (``sampling_offsets``, ``attention_weights``,
``value_proj``, ``output_proj``), so its checkpoints load with ``load_state_dict`` unchanged.
Differences: no host-synchronising assert on the spatial shapes (the op validates them on CPU),
so the module traces under ``torch.compile(fullgraph=True)``; any head dim works on every backend.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from detr_ops.ops.ms_deform_attn import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention.

    Args:
        d_model: hidden size C (divisible by ``n_heads``).
        n_levels: number of feature levels L.
        n_heads: number of heads M (head dim D = d_model // n_heads).
        n_points: sampling points P per head and level.
        backend: ``"auto"`` / ``"native"`` (compiled kernel of the input's device) or ``"triton"``.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, *, backend="auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        # The original warns when d_model // n_heads is not a power of 2 (its CUDA kernel is slower
        # then); the detr_ops kernels take any head dim at full speed, so there is nothing to warn about.
        self.im2col_step = 64
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Offsets start at zero weight and a bias that puts head h's points on a ray at angle
        # 2*pi*h/M, scaled so the larger coordinate is 1, 2, ..., P pixels: the heads look in
        # different directions and the points spread along each direction.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, self.n_points, 1)
        bias = directions.view(self.n_heads, 1, 1, 2).expand(self.n_heads, self.n_levels, self.n_points, 2) * steps
        with torch.no_grad():
            self.sampling_offsets.bias = nn.Parameter(bias.reshape(-1).contiguous())
        # Uniform attention over all points at the start; value/output projections Xavier, zero bias.
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        """
        query [N, Lq, C]; reference_points [N, Lq, L, 2] (x, y in [0, 1]) or [N, Lq, L, 4]
        (x, y, w, h boxes); input_flatten [N, S, C] with S = sum(H_l * W_l);
        input_spatial_shapes [L, 2] (H, W); input_level_start_index [L];
        input_padding_mask [N, S], True at padding. Returns [N, Lq, C].
        """
        N, Lq, _ = query.shape
        _, S, _ = input_flatten.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        # The offsets and weights are laid out for n_levels levels: another number of levels would
        # otherwise surface as a broadcasting error deep inside the location arithmetic.
        if len(input_spatial_shapes) != L:
            raise ValueError(f"input_spatial_shapes has {len(input_spatial_shapes)} levels but this MSDeformAttn was "
                             f"built with n_levels={L}")
        if reference_points.dim() != 4 or reference_points.shape[2] != L:
            raise ValueError(f"reference_points must be [N, Lq, n_levels={L}, 2 or 4], got shape "
                             f"{tuple(reference_points.shape)}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(N, Lq, M, L * P), -1).view(N, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W, H).
            normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Offsets are relative to the reference box: P points span half its size in each direction.
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must have a last dimension of 2 or 4, got {reference_points.shape[-1]}")
        output = self._attend(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(output)

    def _attend(self, value, spatial_shapes, level_start_index, locations, weights):
        """The sampling step alone, so a subclass can swap the kernel (detr_ops.models runs the same
        module on the grid_sample reference this way) and keep the projections and location math."""
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, self.im2col_step,
                              backend=self.backend)
