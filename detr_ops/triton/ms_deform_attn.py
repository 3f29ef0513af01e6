"""Triton kernels and launchers of multi-scale deformable attention; ``detr_ops/_registrations.py``
defines them as ``torch.ops.detr_ops.ms_deform_attn_triton``, ``ms_deform_attn_backward_triton``,
``ms_deform_attn_points_triton`` and ``ms_deform_attn_points_backward_triton``.

The sampling rule is the one of ``csrc/ops/common/ms_deform_attn.h`` (Deformable DETR's 2020 CUDA
kernel): pixel = x * W - 0.5, a point is sampled only when -1 < pixel < W (strict, both axes; NaN
and inf fail it too), floor corners, corners off the map masked out, location gradients from the
bilinear weights on the cell [floor, floor + 1].

Points: the K points of each (n, q, m) are consecutive, level by level; ``POINT_BEGIN`` (a
constexpr tuple of L + 1 prefix sums: ``(0, P, 2P, ...)`` for ``ms_deform_attn``, the sums of
``num_points_list`` for ``ms_deform_attn_points``) says where each level's run starts. A constexpr
rather than a device tensor: a host list would need a host-to-device copy per call, which
synchronises, or in a captured CUDA graph reads a host buffer that has since been reused. The levels
are unrolled; one compilation per distinct tuple (one per model).

Tiles: a program handles BLOCK_Q (batch, query) rows of one head and BLOCK_D channels, at most
``_TILE`` elements (8 per thread at 4 warps): the corner indices and bilinear weights of each point
are [BLOCK_Q] vectors broadcast over the channels of the [BLOCK_Q, BLOCK_D] gathers. Larger tiles
(4096 elements before) made ptxas use 255 registers and spill at D = 256. The forward splits D over
programs (coordinates recomputed per chunk, cheap next to the gathers); the backward needs whole-D
dot products per point and loops over the chunks inside the program. The backward keeps more live
per element (the grad_output tile, four corners' values, atomics' addresses), and at 1024 elements
ptxas spilled 0.4-1 KB per thread for small D and 0.4-2.6 KB for float64 (docs/triton_resources.md):
its tile is ``_BACKWARD_TILE`` elements, ``_BACKWARD_TILE_FP64`` for float64.

Everything is computed in the accumulation dtype (float32, or float64 for float64 input) and
rounded to the input dtype once at the end.

Backward, two ways:

* default: grad_value is accumulated with relaxed atomic adds (the adds need no ordering with any
  other memory access; the default acq_rel adds fences) into an accumulation-dtype buffer. Fast,
  not deterministic.
* under ``torch.use_deterministic_algorithms(True)``: the backward kernel writes, for every
  (point, corner), the value row it reads (or a sentinel for a corner off the map) and its weight
  a * w; a stable sort by row groups the contributions of each row in point order (the order the
  CPU kernel adds them in), ``searchsorted`` finds each row's segment, and ``_grad_value_kernel``
  sums each segment in that order. No atomics: the same bits on every run, for any block size. It
  costs a sort of 4 * N * Lq * M * K int64 keys and about 28 bytes per (point, corner) of temporary
  memory. grad_sampling_locations and grad_attention_weights have no atomics in either way.
"""
import contextlib

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from detr_ops import _backend
from detr_ops import _ms_deform_attn_shapes as shapes_check
from detr_ops._dtypes import acc_dtype
from detr_ops.triton._launch import launch

# Elements per [BLOCK_Q, BLOCK_D] tile, the widest channel block, and the warps per program.
_TILE = 1024
_BACKWARD_TILE = 512
_BACKWARD_TILE_FP64 = 256
_MAX_BLOCK_D = 256
_NUM_WARPS = 4
# CUDA's limit on a grid's x dimension; every kernel here uses a 1-D grid.
_MAX_PROGRAMS = 2**31 - 1


# Compiled, Triton fuses a * b - c into one FMA (one rounding); the 2020 kernel rounds loc * W and
# then subtracts 0.5, and at a kink that decides on which side of an integer the coordinate falls.
# libdevice's mul_rn is never fused; the interpreter has no libdevice, and never fuses.
_FUSES: tl.constexpr = tl.constexpr(not _backend.interpreting())


@triton.jit
def _mul_rn(a, b):
    if _FUSES:
        return libdevice.mul_rn(a, b)
    else:
        return a * b


@triton.jit
def _level(shapes_ptr, starts_ptr, l, S):
    """H, W, first value row of level l, and whether its H * W rows fit in value's S rows (without
    forming H * W, which wraps around int64 for shapes such as 2^32 x 2^32)."""
    H = tl.load(shapes_ptr + 2 * l)
    W = tl.load(shapes_ptr + 2 * l + 1)
    start = tl.load(starts_ptr + l)
    fits = (H == 0) | (W <= (S - start) // tl.maximum(H, 1))
    ok = (start >= 0) & (H >= 0) & (W >= 0) & (start <= S) & fits
    return H, W, start, ok


@triton.jit
def _corners(loc_ptr, k, mask_q, H, W, ok, acc_ptr):
    """Floor corner, fractional position and corner masks of points k (a [BLOCK_Q] vector)."""
    acc_ty = acc_ptr.dtype.element_ty
    lx = tl.load(loc_ptr + 2 * k, mask=mask_q, other=0.0).to(acc_ty)
    ly = tl.load(loc_ptr + 2 * k + 1, mask=mask_q, other=0.0).to(acc_ty)
    Wf = W.to(acc_ty)
    Hf = H.to(acc_ty)
    # loc * W rounded, then - 0.5 (see _mul_rn): on which side of an integer a kink lands.
    x = _mul_rn(lx, Wf) - 0.5
    y = _mul_rn(ly, Hf) - 0.5
    # `ok` (a scalar) is widened to a vector before the `&`: the interpreter mis-types scalar & vector
    # bool masks (int32 instead of bool), which tl.load then rejects.
    ok_q = mask_q & ((k * 0 + ok.to(tl.int64)) != 0)
    inside = ok_q & (x > -1.0) & (x < Wf) & (y > -1.0) & (y < Hf)
    # Replace rejected (possibly NaN/inf) coordinates before the float -> int conversion.
    x = tl.where(inside, x, 0.0)
    y = tl.where(inside, y, 0.0)
    fx = tl.floor(x)
    fy = tl.floor(y)
    x0 = fx.to(tl.int64)
    y0 = fy.to(tl.int64)
    vx0 = inside & (x0 >= 0)
    vx1 = inside & (x0 + 1 < W)
    vy0 = y0 >= 0
    vy1 = y0 + 1 < H
    return x0, y0, x - fx, y - fy, vx0 & vy0, vx1 & vy0, vx0 & vy1, vx1 & vy1, inside


@triton.jit
def _corner(c: tl.constexpr, fx, fy, pix, W, c00, c10, c01, c11):
    """Corner c of a point (0: (x0, y0), 1: (x0 + 1, y0), 2: (x0, y0 + 1), 3: (x0 + 1, y0 + 1)): whether it
    is on the map, its bilinear weight w, dw/dx, dw/dy, and its pixel offset within the level (only
    meaningful where it is on the map: the loads and stores are masked, never the offset itself)."""
    if c == 0:
        return c00, (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx), pix
    elif c == 1:
        return c10, fx * (1.0 - fy), 1.0 - fy, -fx, pix + 1
    elif c == 2:
        return c01, (1.0 - fx) * fy, -fy, 1.0 - fx, pix + W
    else:
        return c11, fx * fy, fy, fx, pix + W + 1


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, NLq, S, M, D, Lq, K, D_BLOCKS,
                    NUM_LEVELS: tl.constexpr, POINT_BEGIN: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    acc_ty = out_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # (query block, head, channel block), channel block fastest
    db = pid % D_BLOCKS
    m = (pid // D_BLOCKS) % M
    nq = (pid // (D_BLOCKS * M)) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = nq < NLq
    n = nq // Lq
    d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < D
    point0 = (nq * M + m) * K
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=acc_ty)
    for l in tl.static_range(NUM_LEVELS):
        H, W, start, ok = _level(shapes_ptr, starts_ptr, l, S)
        row_base = (n * S + start) * M + m  # [BLOCK_Q], value row of pixel 0 of this level
        for kk in range(POINT_BEGIN[l], POINT_BEGIN[l + 1]):
            k = point0 + kk
            x0, y0, fx, fy, c00, c10, c01, c11, inside = _corners(loc_ptr, k, mask_q, H, W, ok, out_ptr)
            a = tl.load(attn_ptr + k, mask=inside, other=0.0).to(acc_ty)
            pix = y0 * W + x0
            for c in tl.static_range(4):
                valid, w, _, _, off = _corner(c, fx, fy, pix, W, c00, c10, c01, c11)
                rows = (row_base + off * M) * D
                v = tl.load(value_ptr + rows[:, None] + d[None, :], mask=valid[:, None] & mask_d[None, :], other=0.0)
                acc += (a * tl.where(valid, w, 0.0))[:, None] * v.to(acc_ty)
    out_rows = (nq * M + m) * D
    tl.store(out_ptr + out_rows[:, None] + d[None, :], acc, mask=mask_q[:, None] & mask_d[None, :])


@triton.jit
def _backward_kernel(grad_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_value_ptr, grad_loc_ptr,
                     grad_attn_ptr, key_ptr, coef_ptr, NLq, S, M, D, Lq, K, ROWS, NUM_LEVELS: tl.constexpr,
                     POINT_BEGIN: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                     ONE_CHUNK: tl.constexpr, DETERMINISTIC: tl.constexpr):
    """grad_value_ptr: the accumulation-dtype buffer the atomic adds go to, or (DETERMINISTIC) any
    accumulation-dtype tensor, untouched; key_ptr/coef_ptr: (DETERMINISTIC) the value row and the
    weight a * w of every (point, corner), 4 * k + c, with ROWS for a corner off the map."""
    acc_ty = grad_value_ptr.dtype.element_ty
    out_ty = grad_attn_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)  # (query block, head), head fastest
    m = pid % M
    nq = (pid // M) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_q = nq < NLq
    n = nq // Lq
    point0 = (nq * M + m) * K
    grad_rows = (nq * M + m) * D
    if ONE_CHUNK:  # D <= BLOCK_D: the grad rows are loaded once, not once per point
        d = tl.arange(0, BLOCK_D)
        mask_d = d < D
        g = tl.load(grad_ptr + grad_rows[:, None] + d[None, :], mask=mask_q[:, None] & mask_d[None, :],
                    other=0.0).to(acc_ty)
    for l in tl.static_range(NUM_LEVELS):
        H, W, start, ok = _level(shapes_ptr, starts_ptr, l, S)
        row_base = (n * S + start) * M + m
        for kk in range(POINT_BEGIN[l], POINT_BEGIN[l + 1]):
            k = point0 + kk
            x0, y0, fx, fy, c00, c10, c01, c11, inside = _corners(loc_ptr, k, mask_q, H, W, ok, grad_value_ptr)
            a = tl.load(attn_ptr + k, mask=inside, other=0.0).to(acc_ty)
            pix = y0 * W + x0
            if DETERMINISTIC:
                for c in tl.static_range(4):
                    valid, w, _, _, off = _corner(c, fx, fy, pix, W, c00, c10, c01, c11)
                    tl.store(key_ptr + 4 * k + c, tl.where(valid, row_base + off * M, ROWS), mask=mask_q)
                    tl.store(coef_ptr + 4 * k + c, a * tl.where(valid, w, 0.0), mask=mask_q)
            g_attn = tl.zeros([BLOCK_Q], dtype=acc_ty)
            g_x = tl.zeros([BLOCK_Q], dtype=acc_ty)
            g_y = tl.zeros([BLOCK_Q], dtype=acc_ty)
            for d0 in range(0, D, BLOCK_D):
                if not ONE_CHUNK:
                    d = d0 + tl.arange(0, BLOCK_D)
                    mask_d = d < D
                    g = tl.load(grad_ptr + grad_rows[:, None] + d[None, :], mask=mask_q[:, None] & mask_d[None, :],
                                other=0.0).to(acc_ty)
                for c in tl.static_range(4):
                    valid, w, dwx, dwy, off = _corner(c, fx, fy, pix, W, c00, c10, c01, c11)
                    ptrs = ((row_base + off * M) * D)[:, None] + d[None, :]
                    mask = valid[:, None] & mask_d[None, :]
                    v = tl.load(value_ptr + ptrs, mask=mask, other=0.0).to(acc_ty)
                    dot = tl.sum(g * v, axis=1)
                    if not DETERMINISTIC:
                        tl.atomic_add(grad_value_ptr + ptrs, (a * tl.where(valid, w, 0.0))[:, None] * g, mask=mask,
                                      sem="relaxed")
                    # A corner off the map adds exactly 0 (its dot is over masked-out zeros, but a NaN
                    # or inf in grad_output would make 0 * dot NaN, as no other backend does).
                    g_attn += tl.where(valid, w * dot, 0.0)
                    g_x += tl.where(valid, dwx * dot, 0.0)
                    g_y += tl.where(valid, dwy * dot, 0.0)
            tl.store(grad_attn_ptr + k, g_attn.to(out_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k, (a * g_x * W.to(acc_ty)).to(out_ty), mask=mask_q)
            tl.store(grad_loc_ptr + 2 * k + 1, (a * g_y * H.to(acc_ty)).to(out_ty), mask=mask_q)


@triton.jit
def _grad_value_kernel(grad_ptr, order_ptr, coef_ptr, segment_ptr, grad_value_ptr, D, K, D_BLOCKS,
                       BLOCK_D: tl.constexpr):
    """grad_value row r (of N*S*M, channel block db) = sum over its segment [segment[r], segment[r+1])
    of the sorted (point, corner) list, in that order, of coef * grad_output row of the point."""
    acc_ty = coef_ptr.dtype.element_ty
    pid = tl.program_id(0).to(tl.int64)
    r = pid // D_BLOCKS
    d = (pid % D_BLOCKS) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < D
    begin = tl.load(segment_ptr + r)
    end = tl.load(segment_ptr + r + 1)
    acc = tl.zeros([BLOCK_D], dtype=acc_ty)
    for j in range(begin, end):
        entry = tl.load(order_ptr + j)  # 4 * k + c
        coef = tl.load(coef_ptr + entry)
        item = entry // 4 // K  # the (n, q, m) of point k: its grad_output row
        g = tl.load(grad_ptr + item * D + d, mask=mask_d, other=0.0).to(acc_ty)
        acc += coef * g
    tl.store(grad_value_ptr + r * D + d, acc.to(grad_value_ptr.dtype.element_ty), mask=mask_d)


# ---- launchers -------------------------------------------------------------------------------------


def _blocks(D: int, tile=None):
    """(BLOCK_Q, BLOCK_D): channel blocks of up to _MAX_BLOCK_D, rows filling a `tile`-element tile
    (default _TILE, read at the call: a default argument would freeze it at import)."""
    block_d = min(triton.next_power_of_2(max(D, 1)), _MAX_BLOCK_D)
    return max(1, (tile or _TILE) // block_d), block_d


def _programs(count: int, what: str) -> tuple:
    """A 1-D grid of `count` programs, or a clear error past CUDA's grid limit."""
    if count > _MAX_PROGRAMS:
        raise ValueError(f"ms_deform_attn (Triton): {what} need {count} programs, more than a CUDA grid holds "
                         f"({_MAX_PROGRAMS})")
    return (count,)


def _on_device(t: torch.Tensor):
    """Launch on t's GPU even when another one is current (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _point_begin(num_points) -> tuple:
    begin = [0]
    for p in num_points:
        begin.append(begin[-1] + int(p))
    return tuple(begin)


def _forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, point_begin):
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    K = point_begin[-1]
    out = torch.zeros((N, Lq, M * D), dtype=acc_dtype(value.dtype), device=value.device)
    if N * Lq * M * D > 0 and K > 0:
        block_q, block_d = _blocks(D)
        d_blocks = triton.cdiv(D, block_d)
        grid = _programs(triton.cdiv(N * Lq, block_q) * M * d_blocks, f"N * Lq * M = {N * Lq * M} rows")
        with _on_device(value):
            launch(_forward_kernel)[grid](
                value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
                sampling_locations.contiguous(), attention_weights.contiguous(), out, N * Lq, S, M, D, Lq, K,
                d_blocks, NUM_LEVELS=len(point_begin) - 1, POINT_BEGIN=point_begin, BLOCK_Q=block_q,
                BLOCK_D=block_d, num_warps=_NUM_WARPS,
            )
    return out.to(value.dtype)


def _backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              point_begin):
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    K = point_begin[-1]
    acc = acc_dtype(value.dtype)
    deterministic = torch.are_deterministic_algorithms_enabled()
    grad_loc = torch.zeros(sampling_locations.shape, dtype=value.dtype, device=value.device)
    grad_attn = torch.zeros(attention_weights.shape, dtype=value.dtype, device=value.device)
    if N * Lq * M * D == 0 or K == 0:
        return torch.zeros_like(value), grad_loc, grad_attn
    block_q, block_d = _blocks(D, _BACKWARD_TILE_FP64 if acc == torch.float64 else _BACKWARD_TILE)
    grid = _programs(triton.cdiv(N * Lq, block_q) * M, f"N * Lq * M = {N * Lq * M} rows")
    value = value.contiguous()
    grad_output = grad_output.contiguous()
    rows = N * S * M  # value rows (n, s, m); also the key of a corner off the map
    if deterministic:
        keys = torch.empty(N * Lq * M * K * 4, dtype=torch.int64, device=value.device)
        coefs = torch.empty(keys.shape, dtype=acc, device=value.device)
        grad_value = coefs  # the accumulation-dtype pointer the kernel takes its dtype from; not written
    else:
        grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
        keys = coefs = grad_value  # not used
    with _on_device(value):
        launch(_backward_kernel)[grid](
            grad_output, value, spatial_shapes.contiguous(), level_start_index.contiguous(),
            sampling_locations.contiguous(), attention_weights.contiguous(), grad_value, grad_loc, grad_attn, keys,
            coefs, N * Lq, S, M, D, Lq, K, rows, NUM_LEVELS=len(point_begin) - 1, POINT_BEGIN=point_begin,
            BLOCK_Q=block_q, BLOCK_D=block_d, ONE_CHUNK=D <= block_d, DETERMINISTIC=deterministic,
            num_warps=_NUM_WARPS,
        )
        if not deterministic:
            return grad_value.to(value.dtype), grad_loc, grad_attn
        # Group the (point, corner) contributions by value row, in point order within a row.
        sorted_keys, order = torch.sort(keys, stable=True)
        segments = torch.searchsorted(sorted_keys, torch.arange(rows + 1, device=value.device))
        grad_value = torch.empty_like(value)  # every row is written (0 for rows no point reads)
        row_block_d = min(triton.next_power_of_2(D), _MAX_BLOCK_D)
        d_blocks = triton.cdiv(D, row_block_d)
        launch(_grad_value_kernel)[_programs(rows * d_blocks, f"N * S * M = {rows} value rows")](
            grad_output, order, coefs, segments, grad_value, D, K, d_blocks, BLOCK_D=row_block_d, num_warps=1,
        )
    return grad_value, grad_loc, grad_attn


# The launchers named like the ops (their annotations are the ops' schemas). Each checks its inputs
# as the C++ kernels do: a raw torch.ops.detr_ops.*_triton call reaches it with any tensors.


def _checked(inputs, num_points_list=None, grad_output=None) -> tuple:
    """The point layout (POINT_BEGIN) of valid inputs; ValueError naming the argument otherwise."""
    value, _, _, sampling_locations, _ = inputs
    shapes_check.check_inputs(*inputs, num_points_list=num_points_list)
    if grad_output is not None:
        shapes_check.check_grad_output(grad_output, value, sampling_locations)
    if num_points_list is None:
        _, _, _, L, P, _ = sampling_locations.shape
        num_points_list = [P] * L
    shapes_check.check_products(value, sampling_locations, num_points_list)
    return _point_begin(num_points_list)


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    inputs = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _forward(*inputs, _checked(inputs))


def ms_deform_attn_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _backward(grad_output, *inputs, _checked(inputs, grad_output=grad_output))


def ms_deform_attn_points(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                          num_points_list: list[int]) -> torch.Tensor:
    inputs = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _forward(*inputs, _checked(inputs, num_points_list))


def ms_deform_attn_points_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                                   level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                                   attention_weights: torch.Tensor,
                                   num_points_list: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    inputs = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return _backward(grad_output, *inputs, _checked(inputs, num_points_list, grad_output))
