"""References of multi-scale deformable attention in plain PyTorch.

* :func:`ms_deform_attn_pytorch`: Deformable DETR's ``grid_sample`` fallback, one call per level.
  It materialises every sampled value, ``[N*M, D, Lq, L*P]``, so it is slow and memory-hungry at
  detector sizes, but its gradients come from autograd and it works in float64. Users without the
  compiled extension can run it.
* :func:`ms_deform_attn_kernel2020`: the arithmetic of Deformable DETR's 2020 CUDA kernel
  (``models/ops/src/cuda/ms_deform_im2col_cuda.cuh``: ``ms_deformable_im2col_gpu_kernel`` and the
  ``col2im`` backward), restated in float64 from reading its source: forward and its hand-written
  gradients. This is what the detr_ops kernels follow, kinks included; the two references agree
  away from them (docs/ms_deform_attn.md).

Both take the ``[N, Lq, M, L, P, 2]`` layout, or with ``num_points_list`` (points per level, as
RT-DETRv2 / D-FINE) locations ``[N, Lq, M, sum(P), 2]`` and weights ``[N, Lq, M, sum(P)]``.
"""
import torch
import torch.nn.functional as F


def _per_level(sampling_locations, attention_weights, num_points_list):
    """[(locations [N, Lq, M, P_l, 2], weights [N, Lq, M, P_l])] per level, for either layout."""
    if num_points_list is None:
        L = sampling_locations.shape[3]
        return [(sampling_locations[:, :, :, l], attention_weights[:, :, :, l]) for l in range(L)]
    counts = [int(p) for p in num_points_list]
    return list(zip(sampling_locations.split(counts, dim=3), attention_weights.split(counts, dim=3)))


def ms_deform_attn_pytorch(value, value_spatial_shapes, value_level_start_index, sampling_locations, attention_weights,
                           im2col_step=64, *, num_points_list=None):
    """``value [N, S, M, D]``, ``value_spatial_shapes [L, 2]`` (H, W), ``sampling_locations
    [N, Lq, M, L, P, 2]`` (x, y in [0, 1]), ``attention_weights [N, Lq, M, L, P]`` -> ``[N, Lq, M*D]``
    (or the ``num_points_list`` layout, see the module docstring).

    ``value_level_start_index`` and ``im2col_step`` are accepted for signature compatibility with
    the compiled op; levels are taken to be stored one after another in ``value``.
    """
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    # Python ints are needed to split value (one host read of the tiny [L, 2] tensor).
    sizes = [(int(h), int(w)) for h, w in value_spatial_shapes.tolist()]
    levels = value.split([h * w for h, w in sizes], dim=1)
    samples, weights = [], []
    for (h, w), image, (locations, level_weights) in zip(
            sizes, levels, _per_level(sampling_locations, attention_weights, num_points_list)):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        image = image.flatten(2).transpose(1, 2).reshape(N * M, D, h, w)
        # grid_sample's grid lives in [-1, 1]; with align_corners=False, g = 2x - 1 maps to pixel x*W - 0.5.
        # [N, Lq, M, P_l, 2] -> [N*M, Lq, P_l, 2]
        grid = (2 * locations - 1).transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        weights.append(level_weights.transpose(1, 2).flatten(0, 1))  # [N*M, Lq, P_l]
    # [N*M, D, Lq, sum P] weighted by [N*M, 1, Lq, sum P], summed over the points.
    out = (torch.cat(samples, dim=-1) * torch.cat(weights, dim=-1)[:, None]).sum(-1)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()


def ms_deform_attn_kernel2020(value, value_spatial_shapes, value_level_start_index, sampling_locations,
                              attention_weights, grad_output=None, *, num_points_list=None):
    """The 2020 CUDA kernel's forward and, given ``grad_output [N, Lq, M*D]``, its backward, in float64.

    Returns ``output [N, Lq, M*D]``, or ``(output, grad_value, grad_sampling_locations,
    grad_attention_weights)`` with ``grad_output``. The kernel's rules, per level of size H x W:
    ``h_im = loc_y * H - 0.5``, ``w_im = loc_x * W - 0.5``; the point is sampled only when
    ``h_im > -1 and w_im > -1 and h_im < H and w_im < W``; corners ``h_low = floor(h_im)``,
    ``h_high = h_low + 1`` (w alike), each read only when inside ``[0, H-1] x [0, W-1]``; weights
    ``hh*hw, hh*lw, lh*hw, lh*lw`` with ``lh = h_im - h_low``, ``hh = 1 - lh``; the location gradient
    is ``W * grad_w_weight * grad * attn`` (and H, h) with ``grad_w_weight = -hh*v1 + hh*v2 - lh*v3 +
    lh*v4`` and ``grad_h_weight = -hw*v1 - lw*v2 + hw*v3 + lw*v4`` from the corner values, the
    derivative of the weights on the cell ``[floor, floor + 1]``.
    """
    value = value.detach().double()
    N, _, M, D = value.shape
    Lq = sampling_locations.shape[1]
    shapes = [(int(h), int(w)) for h, w in value_spatial_shapes.tolist()]
    starts = [int(s) for s in value_level_start_index.tolist()]
    out = value.new_zeros(N, Lq, M, D)
    g = None if grad_output is None else grad_output.detach().double().view(N, Lq, M, D)
    grad_value = torch.zeros_like(value)
    grad_levels = []
    n_index = torch.arange(N).view(N, 1, 1, 1)
    m_index = torch.arange(M).view(1, 1, M, 1)
    for (H, W), start, (locations, weights) in zip(
            shapes, starts, _per_level(sampling_locations, attention_weights, num_points_list)):
        locations, attn = locations.detach().double(), weights.detach().double()  # [N, Lq, M, P, 2], [N, Lq, M, P]
        level = value[:, start:start + H * W]  # [N, H*W, M, D]
        h_im = locations[..., 1] * H - 0.5
        w_im = locations[..., 0] * W - 0.5
        sampled = (h_im > -1) & (w_im > -1) & (h_im < H) & (w_im < W)
        h_low = torch.where(sampled, h_im, 0.0).floor()
        w_low = torch.where(sampled, w_im, 0.0).floor()
        lh, lw = h_im - h_low, w_im - w_low
        hh, hw = 1 - lh, 1 - lw
        h_low, w_low = h_low.long(), w_low.long()
        h_high, w_high = h_low + 1, w_low + 1
        # (row, column, read?, weight) of the kernel's v1..v4.
        corners = [(h_low, w_low, (h_low >= 0) & (w_low >= 0), hh * hw),
                   (h_low, w_high, (h_low >= 0) & (w_high <= W - 1), hh * lw),
                   (h_high, w_low, (h_high <= H - 1) & (w_low >= 0), lh * hw),
                   (h_high, w_high, (h_high <= H - 1) & (w_high <= W - 1), lh * lw)]
        v, rows = [], []
        for h, w, read, _ in corners:
            read = read & sampled
            row = torch.where(read, h * W + w, 0)
            v.append(level[n_index, row, m_index] * read[..., None])  # [N, Lq, M, P, D]
            rows.append((row, read))
        w1, w2, w3, w4 = (c[3][..., None] for c in corners)
        val = w1 * v[0] + w2 * v[1] + w3 * v[2] + w4 * v[3]
        val = torch.where(sampled[..., None], val, 0.0)
        out += (attn[..., None] * val).sum(3)
        if g is None:
            continue
        top_grad = g[:, :, :, None, :]  # [N, Lq, M, 1, D]
        top_grad_value = top_grad * attn[..., None]
        hh_, hw_, lh_, lw_ = (t[..., None] for t in (hh, hw, lh, lw))
        grad_h_weight = -hw_ * v[0] - lw_ * v[1] + hw_ * v[2] + lw_ * v[3]
        grad_w_weight = -hh_ * v[0] + hh_ * v[1] - lh_ * v[2] + lh_ * v[3]
        inside = sampled[..., None]
        grad_attn = torch.where(inside, top_grad * val, 0.0).sum(-1)
        grad_x = torch.where(inside, W * grad_w_weight * top_grad_value, 0.0).sum(-1)
        grad_y = torch.where(inside, H * grad_h_weight * top_grad_value, 0.0).sum(-1)
        grad_levels.append((torch.stack([grad_x, grad_y], -1), grad_attn))
        level_grad = grad_value[:, start:start + H * W]
        for (row, read), weight in zip(rows, (w1, w2, w3, w4)):
            contribution = weight * top_grad_value * read[..., None]
            index = (n_index.expand_as(row), row, m_index.expand_as(row))
            level_grad.index_put_(index, contribution, accumulate=True)
    out = out.view(N, Lq, M * D)
    if g is None:
        return out
    if num_points_list is None:
        grad_loc = torch.stack([gl for gl, _ in grad_levels], 3)
        grad_attn = torch.stack([ga for _, ga in grad_levels], 3)
    else:
        grad_loc = torch.cat([gl for gl, _ in grad_levels], 3)
        grad_attn = torch.cat([ga for _, ga in grad_levels], 3)
    return out, grad_value, grad_loc, grad_attn
