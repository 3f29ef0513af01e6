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

# Status codes of the batched op (csrc/ops/common/lsa_common.h), and scipy's message for each.
OK, INVALID, INFEASIBLE, BAD_SIZE = 0, 1, 2, 3
MESSAGES = {
    INVALID: "matrix contains invalid numeric entries",
    INFEASIBLE: "cost matrix is infeasible",
    BAD_SIZE: "num_rows / num_cols outside [0, R] / [0, C]",
}


def _linear_sum_assignment_unavailable(cost_matrix, maximize=False):
    """Stands in for the compiled function when _C is missing: raises ExtensionError saying why."""
    return _extension.load().linear_sum_assignment(cost_matrix, maximize)


# The compiled function itself (docstring in csrc/bindings/linear_sum_assignment.cpp), with no
# Python frame around it: at DETR sizes (100x7, a few microseconds) a frame is a visible share.
linear_sum_assignment = (
    _extension.load().linear_sum_assignment if _extension.available() else _linear_sum_assignment_unavailable
)


def _sizes(sizes, name: str, cost: torch.Tensor, limit: int) -> Optional[torch.Tensor]:
    """Validates num_rows / num_cols: None, or int64 [B] on cost's device (lists and any integer
    tensor are converted)."""
    if sizes is None:
        return None
    if not isinstance(sizes, torch.Tensor):
        sizes = torch.as_tensor(sizes, device=cost.device)
    sizes = _checks.index_tensor(sizes, name)
    if sizes.shape != (cost.shape[0],):
        raise ValueError(f"{name} must have shape [B] = [{cost.shape[0]}], got {tuple(sizes.shape)}")
    _checks.same_device("cost", cost, name, sizes)
    # On the CPU the range check is free; on a GPU the kernel reports it as status BAD_SIZE.
    if sizes.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ((sizes < 0) | (sizes > limit)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"{name}[{b}] = {int(sizes[b])} is outside [0, {limit}]")
    return sizes


def batched_linear_sum_assignment(
    cost: torch.Tensor,
    num_rows=None,
    num_cols=None,
    maximize: bool = False,
    *,
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
    if check and torch.compiler.is_compiling():
        raise RuntimeError(
            "batched_linear_sum_assignment(check=True) needs the status on the host, which breaks "
            "the graph; inside torch.compile call it with check=False and inspect the returned status"
        )
    _extension.load()
    if _backend.resolve(backend, cost.device) == "triton":
        from detr_ops import _triton_twins  # noqa: F401  (defines the *_triton ops on first use)
        op = torch.ops.detr_ops.batched_linear_sum_assignment_triton
    else:
        op = torch.ops.detr_ops.batched_linear_sum_assignment
    col_for_row, status = op(cost, num_rows, num_cols, bool(maximize))
    if check:
        raise_for_status(status)
    return col_for_row, status


def raise_for_status(status: torch.Tensor) -> None:
    """Raises scipy's ``ValueError`` for the first failed problem of a status tensor (one sync)."""
    status = status.cpu()
    failed = status.nonzero()
    if failed.numel():
        b = int(failed[0, 0])
        raise ValueError(f"{MESSAGES.get(int(status[b]), 'unknown status')} (batch item {b})")


def row_for_col(col_for_row: torch.Tensor, num_cols: int) -> torch.Tensor:
    """``[B, C]`` int64 view of an assignment: the row matched to each column, or -1.

    Cheap and sync-free: one scatter. ``num_cols`` is ``C``, the padded width of the cost.
    """
    B, R = col_for_row.shape
    rows = torch.arange(R, device=col_for_row.device).expand(B, R)
    # Unmatched row i (-1) writes to its own spare column num_cols + i, dropped afterwards: all
    # indices stay distinct, so the scatter is deterministic on every device.
    target = torch.where(col_for_row >= 0, col_for_row, num_cols + rows)
    out = torch.full((B, num_cols + R), -1, dtype=torch.int64, device=col_for_row.device)
    return out.scatter_(1, target, rows)[:, :num_cols]
