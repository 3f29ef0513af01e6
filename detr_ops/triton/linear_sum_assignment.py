"""Triton kernel and launcher of the batched assignment; ``detr_ops/_registrations.py`` defines it as
``torch.ops.detr_ops.batched_linear_sum_assignment_triton``, the twin of the native op.

One program per problem runs the same float64 shortest-augmenting-path algorithm as the C++ and
CUDA kernels (see csrc/ops/cpu/linear_sum_assignment_solver.h for the scipy rules it reproduces):
each step scans the remaining columns in blocks of ``BLOCK`` lanes and picks the next column with
the order-independent form of scipy's rule (csrc/ops/common/linear_sum_assignment.h): lowest path
cost, then the largest tie key, where a free column at scan position p has key ``nc + p`` and an
assigned one ``nc - 1 - p``. Working arrays live in a global-memory workspace, one slice per
problem, so any size runs.

Capacity k is solved on the virtual problem whose columns are the cost's tiled k times (copy c of
column j is column c*C + j; transposed when that is tall): element (i, j) of the working problem
reads physical row i mod rp and column j mod cp, so nothing of size k*C per row is built, and k is
first reduced exactly to ``effective_copies`` (csrc/ops/common/linear_sum_assignment.h).

Barriers. Scalar loads run in every thread and scalar stores in one, so a value that one step
stores and a later step loads must be separated by ``tl.debug_barrier()``; in particular a load
of an entry must not be overtaken by the store that replaces it (a lagging warp would read the new
value and follow another path than the rest: a hang at the next barrier on a GPU). Every such
load/store pair below is load, barrier, store.

Status codes as the native op: 0 ok, 1 invalid entries, 2 infeasible, 3 size out of range.
"""
import contextlib
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from detr_ops.triton._launch import launch

BLOCK = 128


@triton.jit
def _lsa_kernel(
    cost_ptr, s0, s1, s2, R, C,
    rows_ptr, cols_ptr, capacity, caps_ptr,
    wd_ptr, wi_ptr, L,
    out_ptr, status_ptr,
    HAS_ROWS: tl.constexpr, HAS_COLS: tl.constexpr, HAS_CAPS: tl.constexpr, MAXIMIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    zero = b * 0  # int64 zero: makes every size below an int64 tensor, even when specialised to 1
    R = zero + R
    C = zero + C
    L = zero + L
    capacity = zero + capacity
    rows = R
    cols = C
    k = capacity
    if HAS_ROWS:
        rows = tl.load(rows_ptr + b)
    if HAS_COLS:
        cols = tl.load(cols_ptr + b)
    if HAS_CAPS:
        k = tl.load(caps_ptr + b)
    # effective_copies: rows + ceil(rows / cols) copies already give every larger capacity's answer.
    empty = (rows <= 0) | (cols <= 0)
    enough = rows + (rows - 1) // tl.maximum(cols, 1) + 1
    k_eff = tl.where(empty, 0, tl.minimum(k, enough))
    bad = (rows < 0) | (rows > R) | (cols < 0) | (cols > C) | (k < 0)
    if HAS_CAPS:
        bad = bad | (k_eff > capacity)
    status = tl.where(bad, 3, 0).to(tl.int32)
    k_eff = tl.where(bad, 0, k_eff)
    # The working (virtual) problem: nr x nc with nr <= nc; physical rp x cp, strides rs / cs.
    vcols = k_eff * cols
    transposed = vcols < rows
    nr = tl.where(transposed, vcols, tl.where(k_eff > 0, rows, 0))
    nc = tl.where(transposed, rows, vcols)
    rp = tl.maximum(tl.where(transposed, cols, rows), 1)
    cp = tl.maximum(tl.where(transposed, rows, cols), 1)
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
        # NaN or -inf (after the sign) anywhere in the physical block: invalid, as scipy.
        n_phys = rp * cp
        bad_entries = zero
        k0 = zero
        while k0 < n_phys:
            kk = k0 + lanes
            m = kk < n_phys
            x = tl.load(base + (kk // cp) * rs + (kk % cp) * cs, mask=m, other=0).to(tl.float64) * sign
            bad_entries += tl.sum(((x != x) | (x == -inf)) & m)
            k0 += BLOCK
        status = tl.where(bad_entries > 0, 1, status).to(tl.int32)

    if (status == 0) & (nr > 0):
        k0 = zero
        while k0 < nc:
            kk = k0 + lanes
            m = kk < nc
            tl.store(v + kk, tl.zeros([BLOCK], tl.float64), mask=m)
            tl.store(row4col + kk, zero - 1 + lanes * 0, mask=m)
            tl.store(path + kk, zero - 1 + lanes * 0, mask=m)
            tl.store(u + kk, tl.zeros([BLOCK], tl.float64), mask=kk < nr)
            tl.store(col4row + kk, zero - 1 + lanes * 0, mask=kk < nr)
            k0 += BLOCK
        tl.debug_barrier()

        cur = zero
        while (cur < nr) & (status == 0):
            k0 = zero
            while k0 < nc:
                kk = k0 + lanes
                m = kk < nc
                tl.store(remaining + kk, nc - 1 - kk, mask=m)  # scanned from the last column down
                tl.store(spc + kk, tl.full([BLOCK], inf, tl.float64), mask=m)
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
                row = base + (i % rp) * rs
                best = tl.full([], inf, tl.float64)
                best_key = zero - 1
                it0 = zero
                while it0 < num_remaining:
                    it = it0 + lanes
                    m = it < num_remaining
                    j = tl.load(remaining + it, mask=m, other=0)
                    c = tl.load(row + (j % cp) * cs, mask=m, other=0).to(tl.float64) * sign
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
                owner = tl.load(row4col + j)
                last = tl.load(remaining + num_remaining - 1)
                # Everything this step reads is loaded; only now may thread 0 overwrite entries.
                tl.debug_barrier()
                tl.store(cols_seen + n_cols_seen, j)
                n_cols_seen += 1
                is_sink = owner < 0
                tl.store(rows_seen + n_rows_seen, owner, mask=~is_sink)
                n_rows_seen += tl.where(is_sink, 0, 1)
                i = tl.where(is_sink, i, owner)
                sink = tl.where(found, tl.where(is_sink, j, -1), nc)
                tl.store(remaining + pos, last)
                num_remaining -= 1
                tl.debug_barrier()

            if status == 0:
                # Duals: cur takes min_val alone; the other visited rows and the visited columns
                # as in scipy (u += min_val - spc[col4row[row]], v -= min_val - spc[col]).
                u_cur = tl.load(u + cur)
                tl.debug_barrier()
                tl.store(u + cur, u_cur + min_val)
                k0 = zero + 1
                while k0 < n_rows_seen:
                    kk = k0 + lanes
                    m = kk < n_rows_seen
                    r_ = tl.load(rows_seen + kk, mask=m, other=0)
                    c_ = tl.load(col4row + r_, mask=m, other=0)
                    tl.store(u + r_, tl.load(u + r_, mask=m, other=0.0) + (min_val - tl.load(spc + c_, mask=m, other=0.0)), mask=m)
                    k0 += BLOCK
                k0 = zero
                while k0 < n_cols_seen:
                    kk = k0 + lanes
                    m = kk < n_cols_seen
                    c_ = tl.load(cols_seen + kk, mask=m, other=0)
                    tl.store(v + c_, tl.load(v + c_, mask=m, other=0.0) - (min_val - tl.load(spc + c_, mask=m, other=0.0)), mask=m)
                    k0 += BLOCK
                tl.debug_barrier()
                # Flip the path from the sink back to cur: each step loads path[j] and col4row[r],
                # then (after a barrier, so that no thread can still be about to load col4row[r])
                # stores the new row4col[j] and col4row[r].
                j = sink
                r_ = zero - 1
                while r_ != cur:
                    r_ = tl.load(path + j)
                    previous = tl.load(col4row + r_)
                    tl.debug_barrier()
                    tl.store(row4col + j, r_)
                    tl.store(col4row + r_, j)
                    j = previous
                tl.debug_barrier()
            cur += 1

        if status == 0:
            k0 = zero
            while k0 < nr:
                kk = k0 + lanes
                m = kk < nr
                matched = tl.load(col4row + kk, mask=m, other=0)
                # A virtual column (a virtual row, transposed) t is reported as the original column
                # t mod C, which is cp (rp, transposed).
                where = tl.where(transposed, matched, kk)
                what = tl.where(transposed, kk % rp, matched % cp)
                tl.store(out_ptr + b * R + where, what, mask=m)
                k0 += BLOCK
    tl.store(status_ptr + b, status)


def _max_virtual_columns(R: int, C: int, capacity: int) -> int:
    """max(R, effective_copies(capacity, R, C) * C): the widest working problem of the batch (as
    csrc/ops/common/linear_sum_assignment_checks.h)."""
    if R <= 0 or C <= 0:
        return max(R, 0)
    return max(R, min(capacity, R + (R - 1) // C + 1) * C)


def batched_linear_sum_assignment(
    cost: torch.Tensor, num_rows: Optional[torch.Tensor], num_cols: Optional[torch.Tensor], maximize: bool,
    capacity: int = 1, capacities: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    B, R, C = cost.shape
    col_for_row = torch.full((B, R), -1, dtype=torch.int64, device=cost.device)
    status = torch.zeros(B, dtype=torch.int32, device=cost.device)
    if B == 0:
        return col_for_row, status
    L = max(1, _max_virtual_columns(R, C, capacity))
    wd = torch.empty(B * 3 * L, dtype=torch.float64, device=cost.device)
    wi = torch.empty(B * 6 * L, dtype=torch.int64, device=cost.device)
    rows = num_rows.contiguous() if num_rows is not None else cost
    cols = num_cols.contiguous() if num_cols is not None else cost
    caps = capacities.contiguous() if capacities is not None else cost
    # One program per problem on grid axis 0, which holds up to 2^31 - 1 programs (axes 1 and 2 hold
    # only 65535); the device guard launches on the inputs' GPU, not the current one.
    if B > 2**31 - 1:
        raise ValueError(f"cost: a batch of {B} problems exceeds the 2^31 - 1 programs of one launch")
    with torch.cuda.device(cost.device) if cost.device.type == "cuda" else contextlib.nullcontext():
        launch(_lsa_kernel)[(B,)](
            cost, cost.stride(0), cost.stride(1), cost.stride(2), R, C,
            rows, cols, capacity, caps, wd, wi, L, col_for_row, status,
            HAS_ROWS=num_rows is not None, HAS_COLS=num_cols is not None, HAS_CAPS=capacities is not None,
            MAXIMIZE=bool(maximize), BLOCK=BLOCK,
        )
    return col_for_row, status
