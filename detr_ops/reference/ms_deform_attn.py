"""Multi-scale deformable attention written with ``F.grid_sample``, one call per level.

This is the definition the kernels are tested against (and the fallback for users without the
compiled extension). It materialises every sampled value, ``[N*M, D, Lq, L*P]``, so it is slow and
memory-hungry at detector sizes, but its gradients come from autograd and it works in float64.
"""
import torch
import torch.nn.functional as F


def ms_deform_attn_pytorch(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                           im2col_step=64):
    """``value [N, S, M, D]``, ``value_spatial_shapes [L, 2]`` (H, W), ``sampling_locations
    [N, Lq, M, L, P, 2]`` (x, y in [0, 1]), ``attention_weights [N, Lq, M, L, P]`` -> ``[N, Lq, M*D]``.

    ``value_level_start_index`` and ``im2col_step`` are accepted for signature compatibility with
    the compiled op; levels are taken to be stored one after another in ``value``.
    """
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    # Python ints are needed to split value (one host read of the tiny [L, 2] tensor).
    sizes = [(int(h), int(w)) for h, w in value_spatial_shapes.tolist()]
    levels = value.split([h * w for h, w in sizes], dim=1)
    # grid_sample's grid lives in [-1, 1]; with align_corners=False, g = 2x - 1 maps to pixel x*W - 0.5.
    grids = 2 * sampling_locations - 1
    samples = []
    for lid, (h, w) in enumerate(sizes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        image = levels[lid].flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P], summed over the points.
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()
