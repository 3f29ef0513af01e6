"""Exact linear sum assignment: scipy's drop-in and a batched torch op.

* :func:`linear_sum_assignment` is ``scipy.optimize.linear_sum_assignment``: same signature,
  same ``(row_ind, col_ind)`` int64 numpy arrays (identical indices, ties included), same
  errors; computed by the compiled solver with the GIL released.
* :func:`batched_linear_sum_assignment` solves ``B`` problems of a ``[B, R, C]`` cost tensor in
  one call on the tensor's device (CPU threads, one CUDA launch, or one Triton launch), each
  problem restricted to its valid ``num_rows[b] x num_cols[b]`` block, and returns fixed-shape
  tensors, so it needs no host synchronisation unless asked to raise errors.

Every backend computes in float64 and makes scipy's choices, so each problem's matching is the
one scipy returns for ``cost[b, :num_rows[b], :num_cols[b]].double()``.
"""
from typing import Optional, Tuple

import torch

from detr_ops import _backend, _extension
from detr_ops._dtypes import FLOAT_DTYPES
from detr_ops.ops import _checks

# Status codes of the batched op (csrc/ops/common/linear_sum_assignment.h), and scipy's message for each.
OK, INVALID, INFEASIBLE, BAD_SIZE = 0, 1, 2, 3
MESSAGES = {
    INVALID: "matrix contains invalid numeric entries",
    INFEASIBLE: "cost matrix is infeasible",
    BAD_SIZE: "num_rows / num_cols outside [0, R] / [0, C], or capacity out of range",
}


def _linear_sum_assignment_unavailable(cost_matrix, maximize=False):
    """Stands in for the compiled function when _C is missing: raises ExtensionError saying why."""
    return _extension.load().linear_sum_assignment(cost_matrix, maximize)


# The compiled function itself (docstring in csrc/bindings/linear_sum_assignment.cpp), with no
# Python frame around it: at DETR sizes (100x7, a few microseconds) a frame is a visible share.
linear_sum_assignment = (
    _extension.load().linear_sum_assignment if _extension.available() else _linear_sum_assignment_unavailable
)


def _index_argument(values, name: str, cost: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """num_rows / num_cols / capacity as int64 [B] on cost's device (lists, numpy arrays and any
    integer tensor are converted), and the same values on the host where reading them is free (a
    CPU tensor, or host data such as a list; None for a GPU tensor, or while compiling)."""
    host = None
    if not isinstance(values, torch.Tensor):
        host = torch.as_tensor(values)
        if host.numel() == 0 and host.dtype.is_floating_point:
            host = host.long()  # torch.as_tensor([]) is float32; an empty list is a valid empty batch
        host = _checks.index_tensor(host, name)
        if cost.device.type == "cuda":
            # torch.tensor(list, device="cuda") would block the host until the copy is done, on the
            # path documented as sync-free: copy from pinned memory without blocking instead.
            values = host.pin_memory().to(cost.device, non_blocking=True)
        else:
            values = host.to(cost.device)
    values = _checks.index_tensor(values, name)
    if values.shape != (cost.shape[0],):
        raise ValueError(f"{name} must have shape [B] = [{cost.shape[0]}], got {tuple(values.shape)}")
    _checks.same_device("cost", cost, name, values)
    if values.device.type == "cpu":
        host = values
    if torch.compiler.is_compiling():
        host = None
    return values, host


def _sizes(sizes, name: str, cost: torch.Tensor, limit: int) -> Optional[torch.Tensor]:
    """Validates num_rows / num_cols: None, or int64 [B] on cost's device. Checked on the host where
    that is free; on a GPU the kernels report a size out of range as status BAD_SIZE."""
    if sizes is None:
        return None
    sizes, host = _index_argument(sizes, name, cost)
    if host is not None:
        bad = ((host < 0) | (host > limit)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"{name}[{b}] = {int(host[b])} is outside [0, {limit}]")
    return sizes


def _capacity(capacity, cost: torch.Tensor) -> Tuple[int, Optional[torch.Tensor]]:
    """``(capacity, capacities)`` for the op: an int capacity as is; a [B] tensor as ``capacities``
    with an upper bound of its effective values (the op's workspace size on a GPU).

    Every effective capacity is at most R + ceil(R / C) <= 2 R (csrc/ops/common/
    linear_sum_assignment.h, effective_copies), so larger values are clamped to 2 R: exact, and a
    huge Python int would not fit the op's int64."""
    if type(capacity) is int and capacity == 1:  # noqa: E721  (the default, on every DETR call: no checks needed)
        return 1, None
    if isinstance(capacity, bool) or not isinstance(capacity, (int, torch.Tensor, list, tuple)):
        raise TypeError(f"capacity must be an int or an integer [B] tensor, got {type(capacity).__name__}")
    R = cost.shape[1]
    if isinstance(capacity, int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        return min(capacity, 2 * R), None
    capacities, host = _index_argument(capacity, "capacity", cost)
    if host is None:
        return 2 * R, capacities  # reading a GPU tensor's values would sync
    bad = (host < 0).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        raise ValueError(f"capacity[{b}] = {int(host[b])} must be >= 0")
    return (min(int(host.max()), 2 * R) if host.numel() else 0), capacities


def batched_linear_sum_assignment(
    cost: torch.Tensor,
    num_rows=None,
    num_cols=None,
    maximize: bool = False,
    *,
    capacity=1,
    check: bool = True,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Solves ``B`` assignment problems at once: ``(col_for_row [B, R] int64, status [B] int32)``.

    Args:
        cost: ``[B, R, C]`` float16 / bfloat16 / float32 / float64 on any device (any strides).
        num_rows, num_cols: optional int64 ``[B]`` (or lists): problem ``b`` is the block
            ``cost[b, :num_rows[b], :num_cols[b]]``; the rest is padding and never read. In DETR,
            ``num_cols`` is the number of targets of each image.
        maximize: maximise the total instead of minimising it.
        capacity: how many rows each column may take: an int, or an integer ``[B]`` tensor (one
            capacity per problem). Defined as scipy on the problem with its columns tiled
            ``capacity`` times (copy ``c`` of column ``j`` is column ``c * C + j``), each match
            reported as the original column ``j``: H-DETR's one-to-many matching repeats every
            target k times this way (``capacity=k``). Solved on a virtual tiled problem: nothing
            of size ``capacity * C`` per row is built. ``capacity=0`` leaves every row unmatched.
            A ``[B]`` tensor on a GPU sizes the workspace for the largest capacity that can make a
            difference (``2 * R``: about ``48 * R * C`` bytes per problem); pass an int where all
            problems share one.
        check: raise scipy's ``ValueError`` (naming the batch item) for a problem with invalid
            entries or no feasible matching. On a GPU this costs one synchronisation; pass
            ``check=False`` to get the status tensor without it (0 ok, 1 invalid entries,
            2 infeasible, 3 size out of range; failed problems have all rows -1). Inside
            ``torch.compile`` pass ``check=False`` (raising would need the status on the host).
        backend: ``"auto"`` / ``"native"`` (C++ or CUDA kernel) or ``"triton"``.

    Returns:
        ``col_for_row[b, i]``: the column matched to row ``i`` of problem ``b``, or -1 (row beyond
        ``num_rows[b]``, or left unmatched because the problem has more rows than columns). The
        matched pairs are exactly scipy's ``linear_sum_assignment`` of that problem. Use
        :func:`row_for_col` for the column-indexed view.
    """
    cost = _checks.tensor(cost, "cost")
    if cost.dim() != 3:
        raise ValueError(f"cost must be a [B, R, C] tensor, got shape {tuple(cost.shape)}")
    if cost.dtype not in FLOAT_DTYPES:
        raise ValueError(f"cost must be float16, bfloat16, float32 or float64, got {cost.dtype}")
    num_rows = _sizes(num_rows, "num_rows", cost, cost.shape[1])
    num_cols = _sizes(num_cols, "num_cols", cost, cost.shape[2])
    capacity, capacities = _capacity(capacity, cost)
    if check and torch.compiler.is_compiling():
        raise RuntimeError(
            "batched_linear_sum_assignment(check=True) needs the status on the host, which breaks "
            "the graph; inside torch.compile call it with check=False and inspect the returned status"
        )
    _extension.load()
    if _backend.resolve(backend, cost.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        op = torch.ops.detr_ops.batched_linear_sum_assignment_triton.default
    else:
        op = torch.ops.detr_ops.batched_linear_sum_assignment.default
    col_for_row, status = op(cost, num_rows, num_cols, bool(maximize), capacity, capacities)
    if check:
        raise_for_status(status)
    return col_for_row, status


def raise_for_status(status: torch.Tensor) -> None:
    """Raises scipy's ``ValueError`` for the first failed problem of a status tensor (one sync)."""
    # A list, not status.nonzero(): at DETR sizes the whole solve takes tens of microseconds, and a
    # torch op (a parallel region at two threads or more) costs a few of them.
    codes = status.tolist()
    if any(codes):
        b = next(i for i, code in enumerate(codes) if code)
        raise ValueError(f"{MESSAGES.get(codes[b], 'unknown status')} (batch item {b})")


def row_for_col(col_for_row: torch.Tensor, num_cols: int) -> torch.Tensor:
    """``[B, C]`` int64 view of a one-to-one assignment: the row matched to each column, or -1.

    Cheap and sync-free: one scatter. ``num_cols`` is ``C``, the padded width of the cost.
    ``col_for_row`` must be ``[B, R]`` with entries in ``[-1, num_cols)`` and no column twice (an
    assignment solved with ``capacity=1``). On the CPU anything else raises ``ValueError``; on a GPU,
    where checking would need a sync, entries outside ``[-1, num_cols)`` are ignored and a column
    given to several rows reports the lowest of them (deterministic, never out of bounds).
    """
    col_for_row = _checks.tensor(col_for_row, "col_for_row")
    if isinstance(num_cols, bool) or not isinstance(num_cols, int):
        raise TypeError(f"num_cols must be an int, got {type(num_cols).__name__}")
    if num_cols < 0:
        raise ValueError(f"num_cols must be >= 0, got {num_cols}")
    if col_for_row.dim() != 2:
        raise ValueError(f"col_for_row must be a [B, R] tensor, got shape {tuple(col_for_row.shape)}")
    col_for_row = _checks.index_tensor(col_for_row, "col_for_row")
    B, R = col_for_row.shape
    rows = torch.arange(R, device=col_for_row.device).expand(B, R)
    valid = (col_for_row >= 0) & (col_for_row < num_cols)
    checked = col_for_row.device.type == "cpu" and not torch.compiler.is_compiling()
    if checked:
        bad = ((col_for_row < -1) | (col_for_row >= num_cols)).nonzero()
        if bad.numel():
            b, i = (int(x) for x in bad[0])
            raise ValueError(f"col_for_row[{b}, {i}] = {int(col_for_row[b, i])} is outside [-1, num_cols) = "
                             f"[-1, {num_cols}): num_cols must be the width C of the cost the assignment solved")
    # Unmatched (or, on a GPU, invalid) row i writes to its own spare column num_cols + i, dropped
    # afterwards: valid one-to-one entries are all distinct, so the result is deterministic.
    target = torch.where(valid, col_for_row, num_cols + rows)
    if checked and B * R:
        counts = torch.zeros(B, num_cols + R, dtype=torch.int64).scatter_add_(1, target, torch.ones_like(target))
        twice = (counts[:, :num_cols] > 1).nonzero()
        if twice.numel():
            b, j = (int(x) for x in twice[0])
            raise ValueError(f"col_for_row[{b}] gives column {j} to several rows: row_for_col needs a one-to-one "
                             "assignment (capacity=1)")
    out = torch.full((B, num_cols + R), -1, dtype=torch.int64, device=col_for_row.device)
    if col_for_row.device.type == "cpu":
        out.scatter_(1, target, rows)
    else:
        # amin makes a doubly used column (invalid input) deterministic as well.
        out.scatter_reduce_(1, target, rows, reduce="amin", include_self=False)
    return out[:, :num_cols]
