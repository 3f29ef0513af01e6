"""Triton kernel and launcher of the batched assignment; ``detr_ops/_registrations.py`` defines it as
``torch.ops.detr_ops.batched_linear_sum_assignment_triton``, the twin of the native op.

One program per problem runs the same float64 shortest-augmenting-path algorithm as the C++ and
CUDA kernels (see csrc/ops/common/lsa_solver.h for the scipy rules it reproduces): each step scans
the remaining columns in blocks of ``BLOCK`` lanes and picks the next column with the
order-independent form of scipy's rule (csrc/ops/common/lsa_common.h): lowest path cost, then the
largest tie key, where a free column at scan position p has key ``nc + p`` and an assigned one
``nc - 1 - p``. Working arrays live in a global-memory workspace, one slice per problem, so any
size runs; ``tl.debug_barrier()`` separates writes from the reads of other lanes.

Status codes as the native op: 0 ok, 1 invalid entries, 2 infeasible, 3 size out of range.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from detr_ops.triton._launch import launch

BLOCK = 128


@triton.jit
def _lsa_kernel(
    cost_ptr, s0, s1, s2, R, C,
    rows_ptr, cols_ptr,
    wd_ptr, wi_ptr, L,
    out_ptr, status_ptr,
    HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr, MAXIMIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    zero = b * 0  # int64 zero: makes every size below an int64 tensor, even when specialised to 1
    R = zero + R
    C = zero + C
    L = zero + L
    rows = R
    cols = C
    if HAS_ROWS:
        rows = tl.load(rows_ptr + b)
    if HAS_COLS:
        cols = tl.load(cols_ptr + b)
    status = tl.where((rows < 0) | (rows > R) | (cols < 0) | (cols > C), 3, 0).to(tl.int32)
    transposed = cols < rows
    nr = tl.minimum(rows, cols)
    nc = tl.maximum(rows, cols)
    rs = tl.where(transposed, s2 + zero, s1 + zero)  # working row stride
    cs = tl.where(transposed, s1 + zero, s2 + zero)  # working column stride
    base = cost_ptr + b * s0
    sign = -1.0 if MAXIMIZE else 1.0
    inf = float("inf")
    lanes = tl.arange(0, BLOCK).to(tl.int64)

    # Workspace slices: float64 u, v, spc; int64 path, col4row, row4col, remaining, rows/cols seen.
    u = wd_ptr + b * 3 * L
    v = u + L
    spc = v + L
    path = wi_ptr + b * 6 * L
    col4row = path + L
    row4col = col4row + L
    remaining = row4col + L
    rows_seen = remaining + L
    cols_seen = rows_seen + L

    if (status == 0) & (nr > 0):
        # NaN or -inf (after the sign) anywhere in the valid block: invalid, as scipy.
        bad = zero
        k0 = zero
        while k0 < nr * nc:
            k = k0 + lanes
            m = k < nr * nc
            x = tl.load(base + (k // nc) * rs + (k % nc) * cs, mask=m, other=0).to(tl.float64) * sign
            bad += tl.sum(((x != x) | (x == -inf)) & m)
            k0 += BLOCK
        status = tl.where(bad > 0, 1, status).to(tl.int32)

    if (status == 0) & (nr > 0):
        k0 = zero
        while k0 < nc:
            k = k0 + lanes
            m = k < nc
            tl.store(v + k, tl.zeros([BLOCK], tl.float64), mask=m)
            tl.store(row4col + k, zero - 1 + lanes * 0, mask=m)
            tl.store(path + k, zero - 1 + lanes * 0, mask=m)
            tl.store(u + k, tl.zeros([BLOCK], tl.float64), mask=k < nr)
            tl.store(col4row + k, zero - 1 + lanes * 0, mask=k < nr)
            k0 += BLOCK
        tl.debug_barrier()

        cur = zero
        while (cur < nr) & (status == 0):
            k0 = zero
            while k0 < nc:
                k = k0 + lanes
                m = k < nc
                tl.store(remaining + k, nc - 1 - k, mask=m)  # scanned from the last column down
                tl.store(spc + k, tl.full([BLOCK], inf, tl.float64), mask=m)
                k0 += BLOCK
            tl.store(rows_seen, cur)
            tl.debug_barrier()
            min_val = tl.zeros([], tl.float64)
            i = cur
            sink = zero - 1
            num_remaining = nc
            n_rows_seen = zero + 1
            n_cols_seen = zero
            while sink < 0:
                ui = tl.load(u + i)
                best = tl.full([], inf, tl.float64)
                best_key = zero - 1
                it0 = zero
                while it0 < num_remaining:
                    it = it0 + lanes
                    m = it < num_remaining
                    j = tl.load(remaining + it, mask=m, other=0)
                    c = tl.load(base + i * rs + j * cs, mask=m, other=0).to(tl.float64) * sign
                    r = min_val + c - ui - tl.load(v + j, mask=m, other=0.0)
                    s = tl.load(spc + j, mask=m, other=inf)
                    improve = m & (r < s)
                    tl.store(path + j, i + lanes * 0, mask=improve)
                    tl.store(spc + j, r, mask=improve)
                    s = tl.where(improve, r, s)
                    free = tl.load(row4col + j, mask=m, other=0) < 0
                    key = tl.where(m, tl.where(free, nc + it, nc - 1 - it), -1)
                    s = tl.where(m, s, inf)
                    block_min = tl.min(s, axis=0)
                    block_key = tl.max(tl.where(s == block_min, key, -1), axis=0)
                    take = (block_min < best) | ((block_min == best) & (block_key > best_key))
                    best = tl.where(take, block_min, best)
                    best_key = tl.where(take, block_key, best_key)
                    it0 += BLOCK
                tl.debug_barrier()
                found = best < inf
                status = tl.where(found, status, 2).to(tl.int32)
                min_val = best
                pos = tl.where(best_key >= nc, best_key - nc, nc - 1 - best_key)
                pos = tl.where(found, pos, 0)
                j = tl.load(remaining + pos)
                tl.store(cols_seen + n_cols_seen, j)
                n_cols_seen += 1
                owner = tl.load(row4col + j)
                is_sink = owner < 0
                tl.store(rows_seen + n_rows_seen, owner, mask=~is_sink)
                n_rows_seen += tl.where(is_sink, 0, 1)
                i = tl.where(is_sink, i, owner)
                sink = tl.where(found, tl.where(is_sink, j, -1), nc)
                last = tl.load(remaining + num_remaining - 1)
                tl.debug_barrier()
                tl.store(remaining + pos, last)
                num_remaining -= 1
                tl.debug_barrier()

            if status == 0:
                # Duals: cur takes min_val alone; the other visited rows and the visited columns
                # as in scipy (u += min_val - spc[col4row[row]], v -= min_val - spc[col]).
                tl.store(u + cur, tl.load(u + cur) + min_val)
                k0 = zero + 1
                while k0 < n_rows_seen:
                    k = k0 + lanes
                    m = k < n_rows_seen
                    r_ = tl.load(rows_seen + k, mask=m, other=0)
                    c_ = tl.load(col4row + r_, mask=m, other=0)
                    tl.store(u + r_, tl.load(u + r_, mask=m, other=0.0) + (min_val - tl.load(spc + c_, mask=m, other=0.0)), mask=m)
                    k0 += BLOCK
                k0 = zero
                while k0 < n_cols_seen:
                    k = k0 + lanes
                    m = k < n_cols_seen
                    c_ = tl.load(cols_seen + k, mask=m, other=0)
                    tl.store(v + c_, tl.load(v + c_, mask=m, other=0.0) - (min_val - tl.load(spc + c_, mask=m, other=0.0)), mask=m)
                    k0 += BLOCK
                tl.debug_barrier()
                # Flip the path from the sink back to cur.
                j = sink
                r_ = zero - 1
                while r_ != cur:
                    r_ = tl.load(path + j)
                    tl.store(row4col + j, r_)
                    previous = tl.load(col4row + r_)
                    tl.store(col4row + r_, j)
                    j = previous
                tl.debug_barrier()
            cur += 1

        if status == 0:
            k0 = zero
            while k0 < nr:
                k = k0 + lanes
                m = k < nr
                matched = tl.load(col4row + k, mask=m, other=0)
                where = tl.where(transposed, matched, k)
                what = tl.where(transposed, k, matched)
                tl.store(out_ptr + b * R + where, what, mask=m)
                k0 += BLOCK
    tl.store(status_ptr + b, status)


def batched_linear_sum_assignment(
    cost: torch.Tensor, num_rows: Optional[torch.Tensor], num_cols: Optional[torch.Tensor], maximize: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    B, R, C = cost.shape
    col_for_row = torch.full((B, R), -1, dtype=torch.int64, device=cost.device)
    status = torch.zeros(B, dtype=torch.int32, device=cost.device)
    if B == 0:
        return col_for_row, status
    L = max(1, R, C)
    wd = torch.empty(B * 3 * L, dtype=torch.float64, device=cost.device)
    wi = torch.empty(B * 6 * L, dtype=torch.int64, device=cost.device)
    rows = num_rows.contiguous() if num_rows is not None else cost
    cols = num_cols.contiguous() if num_cols is not None else cost
    launch(_lsa_kernel)[(B,)](
        cost, cost.stride(0), cost.stride(1), cost.stride(2), R, C,
        rows, cols, wd, wi, L, col_for_row, status,
        HAS_ROWS=num_rows is not None, HAS_COLS=num_cols is not None, MAXIMIZE=bool(maximize), BLOCK=BLOCK,
    )
    return col_for_row, status
