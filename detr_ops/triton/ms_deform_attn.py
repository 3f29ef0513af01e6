"""Triton kernels and launchers of multi-scale deformable attention; ``detr_ops/_registrations.py``
defines them as ``torch.ops.detr_ops.ms_deform_attn_triton`` and ``ms_deform_attn_backward_triton``.

One program handles a block of BLOCK_Q (batch, query) rows of one head, with all D channels of
that head as the second tile axis: the corner indices and bilinear weights of each sampling point
are computed once per row as [BLOCK_Q] vectors and broadcast over the D channels of the
[BLOCK_Q, BLOCK_D] gathers. The sampling rule is the one of ``csrc/ops/common/ms_deform_attn.h``
(grid_sample, bilinear, zeros padding, align_corners=False): pixel = x * W - 0.5, corners off the
map masked out, points outside [-1, W) x [-1, H) (NaN and inf included) masked out entirely.

Everything is computed in the dtype of the accumulation buffer the launcher passes (float32, or
float64 for float64 input) and rounded to the input dtype once at the end. The backward adds into
grad_value with atomics (into that accumulation buffer), so it is not deterministic; the Python
autograd refuses it under ``torch.use_deterministic_algorithms(True)``.
"""
import torch
import triton
import triton.language as tl

from detr_ops._dtypes import acc_dtype
from detr_ops.triton._launch import launch

# Rows per program: the [BLOCK_Q, BLOCK_D] tiles are kept near 4096 elements for any head dim.
_TILE_ELEMENTS = 4096


@triton.jit
def _corners(loc_ptr, k, mask_q, H, W, ok, acc_ptr):
    """Pixel coordinates and masks of the 4 corners of points k (a [BLOCK_Q] vector)."""
    acc_ty = acc_ptr.dtype.element_ty
    lx = tl.load(loc_ptr + 2 * k, mask=mask_q, other=0.0).to(acc_ty)
    ly = tl.load(loc_ptr + 2 * k + 1, mask=mask_q, other=0.0).to(acc_ty)
    Wf = W.to(acc_ty)
    Hf = H.to(acc_ty)
    x = lx * Wf - 0.5
    y = ly * Hf - 0.5
    # `ok` (a scalar) is widened to a vector before the `&`: the interpreter mis-types scalar & vector
    # bool masks (int32 instead of bool), which tl.load then rejects.
    ok_q = mask_q & ((k * 0 + ok.to(tl.int64)) != 0)
    inside = ok_q & (x >= -1.0) & (x < Wf) & (y >= -1.0) & (y < Hf)
    # Replace rejected (possibly NaN/inf) coordinates before the float -> int conversion.
    x = tl.where(inside, x, 0.0)
    y = tl.where(inside, y, 0.0)
    fx = tl.floor(x)
    fy = tl.floor(y)
    x0 = fx.to(tl.int64)
    y0 = fy.to(tl.int64)
    fracx = x - fx
    fracy = y - fy
    vx0 = inside & (x0 >= 0)
    vx1 = inside & (x0 + 1 < W)
    vy0 = y0 >= 0
    vy1 = y0 + 1 < H
    return x0, y0, fracx, fracy, vx0 & vy0, vx1 & vy0, vx0 & vy1, vx1 & vy1, inside


@triton.jit
def _corner(c: tl.constexpr, fx, fy, pix, W, c00, c10, c01, c11):
    """Corner c of a point (0: (x0, y0), 1: (x0 + 1, y0), 2: (x0, y0 + 1), 3: (x0 + 1, y0 + 1)): whether it
    is on the map, its bilinear weight w, dw/dx, dw/dy, and its pixel offset within the level."""
    if c == 0:
        return c00, (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx), pix
    elif c == 1:
        return c10, fx * (1.0 - fy), 1.0 - fy, -fx, pix + 1
    elif c == 2:
        return c01, (1.0 - fx) * fy, -fy, 1.0 - fx, pix + W
    else:
        return c11, fx * fy, fy, fx, pix + W + 1


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, NLq, S, M, D, Lq, L, P,
                    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_ty = out_ptr.dtype.element_ty
    nq = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    m = tl.program_id(1).to(tl.int64)
    mask_q = nq < NLq
    n = nq // Lq
    d = tl.arange(0, BLOCK_D)
    mask_d = d < D
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=acc_ty)
    for l in range(L):
        H = tl.load(shapes_ptr + 2 * l)
        W = tl.load(shapes_ptr + 2 * l + 1)
        start = tl.load(starts_ptr + l)
        ok = (start >= 0) & (H >= 0) & (W >= 0) & (start <= S) & (H * W <= S - start)
        row_base = (n * S + start) * M + m  # [BLOCK_Q], row of pixel 0 of this level
        for p in range(P):
            k = ((nq * M + m) * L + l) * P + p
            x0, y0, fx, fy, c00, c10, c01, c11, inside = _corners(loc_ptr, k, mask_q, H, W, ok, out_ptr)
            a = tl.load(attn_ptr + k, mask=inside, other=0.0).to(acc_ty)
            pix = y0 * W + x0
            for c in tl.static_range(4):
                valid, w, _, _, off = _corner(c, fx, fy, pix, W, c00, c10, c01, c11)
                rows = (row_base + tl.where(valid, off, 0) * M) * D
                v = tl.load(value_ptr + rows[:, None] + d[None, :], mask=valid[:, None] & mask_d[None, :], other=0.0)
                acc += (a * tl.where(valid, w, 0.0))[:, None] * v.to(acc_ty)
    out_rows = (nq * M + m) * D
    tl.store(out_ptr + out_rows[:, None] + d[None, :], acc, mask=mask_q[:, None] & mask_d[None, :])


@triton.jit
def _backward_kernel(grad_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_value_ptr, grad_loc_ptr,
                     grad_attn_ptr, NLq, S, M, D, Lq, L, P, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_ty = grad_value_ptr.dtype.element_ty
    nq = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    m = tl.program_id(1).to(tl.int64)
    mask_q = nq < NLq
    n = nq // Lq
    d = tl.arange(0, BLOCK_D)
    mask_d = d < D
    mask_qd = mask_q[:, None] & mask_d[None, :]
    g = tl.load(grad_ptr + ((nq * M + m) * D)[:, None] + d[None, :], mask=mask_qd, other=0.0).to(acc_ty)
    for l in range(L):
        H = tl.load(shapes_ptr + 2 * l)
        W = tl.load(shapes_ptr + 2 * l + 1)
        start = tl.load(starts_ptr + l)
        ok = (start >= 0) & (H >= 0) & (W >= 0) & (start <= S) & (H * W <= S - start)
        row_base = (n * S + start) * M + m
        for p in range(P):
            k = ((nq * M + m) * L + l) * P + p
            x0, y0, fx, fy, c00, c10, c01, c11, inside = _corners(loc_ptr, k, mask_q, H, W, ok, grad_value_ptr)
            a = tl.load(attn_ptr + k, mask=inside, other=0.0).to(acc_ty)
            pix = y0 * W + x0
            g_attn = tl.zeros([BLOCK_Q], dtype=acc_ty)
            g_x = tl.zeros([BLOCK_Q], dtype=acc_ty)
            g_y = tl.zeros([BLOCK_Q], dtype=acc_ty)
            for c in tl.static_range(4):
                valid, w, dwx, dwy, off = _corner(c, fx, fy, pix, W, c00, c10, c01, c11)
                rows = (row_base + tl.where(valid, off, 0) * M) * D
                ptrs = rows[:, None] + d[None, :]
                mask = valid[:, None] & mask_d[None, :]
                v = tl.load(value_ptr + ptrs, mask=mask, other=0.0).to(acc_ty)
                dot = tl.sum(g * v, axis=1)
                tl.atomic_add(grad_value_ptr + ptrs, (a * tl.where(valid, w, 0.0))[:, None] * g, mask=mask)
                g_attn += tl.where(valid, w, 0.0) * dot
                g_x += tl.where(valid, dwx, 0.0) * dot
                g_y += tl.where(valid, dwy, 0.0) * dot
            out_ty = grad_attn_ptr.dtype.element_ty
            tl.store(grad_attn_ptr + k, g_attn.to(out_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k, (a * g_x * W.to(acc_ty)).to(out_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k + 1, (a * g_y * H.to(acc_ty)).to(out_ty), mask=mask_q)


def _blocks(D: int):
    block_d = triton.next_power_of_2(max(D, 1))
    return max(1, min(32, _TILE_ELEMENTS // block_d)), block_d


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out = torch.zeros((N, Lq, M * D), dtype=acc_dtype(value.dtype), device=value.device)
    if N * Lq * M * D > 0 and L * P > 0:
        block_q, block_d = _blocks(D)
        grid = (triton.cdiv(N * Lq, block_q), M)
        launch(_forward_kernel)[grid](
            value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous(), out, N * Lq, S, M, D, Lq, L, P,
            BLOCK_Q=block_q, BLOCK_D=block_d,
        )
    return out.to(value.dtype)


def ms_deform_attn_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    grad_value = torch.zeros(value.shape, dtype=acc_dtype(value.dtype), device=value.device)
    grad_loc = torch.zeros(sampling_locations.shape, dtype=value.dtype, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=value.dtype, device=value.device)
    if N * Lq * M * D > 0 and L * P > 0:
        block_q, block_d = _blocks(D)
        grid = (triton.cdiv(N * Lq, block_q), M)
        launch(_backward_kernel)[grid](
            grad_output.to(value.dtype).contiguous(), value.contiguous(), spatial_shapes.contiguous(),
            level_start_index.contiguous(), sampling_locations.contiguous(), attention_weights.contiguous(),
            grad_value, grad_loc, grad_attn, N * Lq, S, M, D, Lq, L, P, BLOCK_Q=block_q, BLOCK_D=block_d,
        )
    return grad_value.to(value.dtype), grad_loc, grad_attn
