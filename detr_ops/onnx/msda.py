"""Multi-scale deformable attention written in standard operators, for export.

Each function has the schema of ``detr_ops::ms_deform_attn`` (value ``[N, S, M, D]``,
spatial_shapes ``[L, 2]`` (H, W), level_start_index ``[L]``, sampling_locations
``[N, Lq, M, L, P, 2]``, attention_weights ``[N, Lq, M, L, P]`` -> ``[N, Lq, M*D]``) and the
native kernels' semantics (``csrc/ops/common/ms_deform_attn.h``): on a level of size H x W the
location (x, y) is the pixel (x * W - 0.5, y * H - 0.5); a point is sampled only when
-1 <= px < W and -1 <= py < H (NaN and inf fail the test and contribute nothing); its corners
floor(p) and floor(p) + 1 are weighted bilinearly and a corner off the map contributes zero.
float16 / bfloat16 are computed in float32, as the kernels do.

``ms_deform_attn_gather`` is index arithmetic, one Gather and one batched MatMul (no GridSample, no loop over
levels: the graph is the same size for any number of levels, and H, W stay runtime values).
``ms_deform_attn_grid_sample`` is one GridSample per level (Deformable DETR's own fallback).
The TensorRT plugin node lives in :mod:`detr_ops.onnx.tensorrt`.
"""
import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _common_dtype(value, sampling_locations, attention_weights) -> torch.dtype:
    """The op's dtype promotion (detr_ops.ops.ms_deform_attn promotes the three float inputs)."""
    return torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)


def ms_deform_attn_gather(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """MSDA as Gather/index arithmetic: every (point, corner) becomes a row index into ``value``.

    All levels are sampled at once: the row of pixel (x, y) of level l for image n and head m is
    ``(n*M + m)*S + start_l + y*W_l + x`` in value laid out as ``[N*M*S, D]``. A zero row appended
    at the end stands for every corner off the map and every point not sampled, so masked corners
    read a true zero (never a clamped neighbour, which could be NaN) and no index is out of range.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out_dtype = _common_dtype(value, sampling_locations, attention_weights)
    ct = _compute_dtype(out_dtype)
    value, loc, attn = value.to(ct), sampling_locations.to(ct), attention_weights.to(ct)

    # Per-level sizes broadcast against [N, Lq, M, L, P] (runtime values: dynamic image sizes stay dynamic).
    shape = (1, 1, 1, L, 1)
    H = spatial_shapes[:, 0].to(torch.int64).reshape(shape)
    W = spatial_shapes[:, 1].to(torch.int64).reshape(shape)
    start = level_start_index.to(torch.int64).reshape(shape)
    # The kernels skip a level whose extent does not fit in value (ms_deform_attn.h, level_in_bounds).
    fits = (start >= 0) & (H >= 0) & (W >= 0) & (start <= S) & (H * W <= S - start)
    Hf, Wf = H.to(ct), W.to(ct)

    x = loc[..., 0] * Wf - 0.5
    y = loc[..., 1] * Hf - 0.5
    sampled = (x >= -1) & (x < Wf) & (y >= -1) & (y < Hf) & fits
    # Rejected points (NaN / inf included) are moved to 0 before floor and the integer cast.
    x = torch.where(sampled, x, torch.zeros_like(x))
    y = torch.where(sampled, y, torch.zeros_like(y))
    fx, fy = torch.floor(x), torch.floor(y)
    lx, ly = x - fx, y - fy
    hx, hy = 1 - lx, 1 - ly
    x0, y0 = fx.to(torch.int64), fy.to(torch.int64)
    x1, y1 = x0 + 1, y0 + 1

    image_head = torch.arange(N, device=value.device).reshape(N, 1, 1, 1, 1) * M \
        + torch.arange(M, device=value.device).reshape(1, 1, M, 1, 1)
    base = image_head * S + start  # [N, 1, M, L, 1]
    zero_row = N * M * S
    rows, weights = [], []
    for cx, cy, bilinear in ((x0, y0, hx * hy), (x1, y0, lx * hy), (x0, y1, hx * ly), (x1, y1, lx * ly)):
        on_map = sampled & (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
        rows.append(torch.where(on_map, base + cy * W + cx, torch.full_like(cx, zero_row)))
        weights.append(torch.where(on_map, bilinear * attn, torch.zeros_like(attn)))
    # [N, Lq, M, 4*L*P]: the four corners of every point, one Gather and one weighted sum.
    rows = torch.cat([r.reshape(N, Lq, M, L * P) for r in rows], dim=-1)
    weights = torch.cat([w.reshape(N, Lq, M, L * P) for w in weights], dim=-1)

    table = torch.cat([value.permute(0, 2, 1, 3).reshape(N * M * S, D), value.new_zeros(1, D)], dim=0)
    samples = torch.index_select(table, 0, rows.reshape(-1)).reshape(N * Lq * M, 4 * L * P, D)
    # bmm, not matmul: matmul's decomposition (run_decompositions) guards on the batch's strides
    # and would specialise the batch size.
    out = torch.bmm(weights.reshape(N * Lq * M, 1, 4 * L * P), samples)  # [N*Lq*M, 1, D]
    return out.reshape(N, Lq, M * D).to(out_dtype)


def _level(value, spatial_shapes, level_start_index, lvl: int):
    """``(rows of level lvl [N, H*W, M, D], H, W)`` with H, W, start as sizes the tracer keeps dynamic."""
    if torch.jit.is_tracing():
        # The TorchScript tracer records 0-dim tensors used as sizes; .item() would bake them in.
        h, w, start = spatial_shapes[lvl, 0], spatial_shapes[lvl, 1], level_start_index[lvl]
        return value[:, start:start + h * w], h, w
    # torch.export: unbacked sizes, with the range facts that let them slice and reshape.
    h, w = spatial_shapes[lvl, 0].item(), spatial_shapes[lvl, 1].item()
    start = level_start_index[lvl].item()
    torch._check(h >= 0)
    torch._check(w >= 0)
    torch._check(start >= 0)
    torch._check(start + h * w >= 0)  # not derived from the facts above by the symbolic reasoning
    torch._check(start + h * w <= value.shape[1])
    return value.narrow(1, start, h * w), h, w


def ms_deform_attn_grid_sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """MSDA as one ``F.grid_sample(bilinear, zeros, align_corners=False)`` per level.

    GridSample's bilinear rule equals the kernels' for every point the kernels sample. Points
    they reject (outside -1 <= p < size, NaN, inf) are moved off the map and their attention
    weight set to 0 here, so that a NaN location or a NaN weight of a rejected point gives 0, as
    in the kernels (GridSample's own handling of NaN grids differs between runtimes). Level sizes
    and starts are read from the index tensors as integers: under ``torch.export`` they become
    unbacked sizes, so the per-level reshape stays dynamic.
    """
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out_dtype = _common_dtype(value, sampling_locations, attention_weights)
    ct = _compute_dtype(out_dtype)
    value, loc, attn = value.to(ct), sampling_locations.to(ct), attention_weights.to(ct)
    samples, weights = [], []
    for lvl in range(L):
        rows, h, w = _level(value, spatial_shapes, level_start_index, lvl)
        # [N, H*W, M, D] -> [N*M, D, H, W]
        level = rows.permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        lloc = loc[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(N * M, Lq, P, 2)
        size = spatial_shapes[lvl].flip(0).to(ct)  # (W, H), as a tensor: stays a runtime value
        pixel = lloc * size - 0.5
        sampled = ((pixel >= -1) & (pixel < size)).all(-1)  # [N*M, Lq, P]; False for NaN / inf
        grid = torch.where(sampled.unsqueeze(-1), 2 * lloc - 1, torch.full_like(lloc, -3.0))
        samples.append(F.grid_sample(level, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
        lattn = attn[:, :, :, lvl].permute(0, 2, 1, 3).reshape(N * M, Lq, P)
        weights.append(torch.where(sampled, lattn, torch.zeros_like(lattn)))
    # [N*M, D, Lq, L*P] weighted by [N*M, 1, Lq, L*P] and summed over the points.
    samples = torch.cat(samples, dim=-1)
    weights = torch.cat(weights, dim=-1).unsqueeze(1)
    out = (samples * weights).sum(-1)
    return out.reshape(N, M * D, Lq).transpose(1, 2).reshape(N, Lq, M * D).to(out_dtype)
