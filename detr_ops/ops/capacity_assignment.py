"""Assignment where each column may take several rows: the one place the matcher solves with a
capacity (H-DETR's one-to-many branch, Stable-DINO's ``repeat_times``).

The definition is the solver's (``batched_linear_sum_assignment(..., capacity=k)``): scipy's
assignment of problem ``b``'s cost ``cost[b, :, :num_cols[b]]`` with its columns tiled
``capacity[b]`` times (copy ``c`` of column ``j`` is column ``c * num_cols[b] + j``), each matched
column reported as the original ``j``. That is H-DETR's ``target["boxes"].repeat(k, 1)`` matched by
scipy, ``j`` taken modulo the number of targets.

When the installed solver has a ``capacity`` argument, it is used (it need not build the tiled
matrix). Otherwise the tiled matrix is built here, on the cost's device and without host
synchronisation, and solved as a plain problem; the results are identical either way. Detected
once, at import.
"""
import inspect
from typing import Tuple, Union

import torch

from detr_ops.ops.linear_sum_assignment import batched_linear_sum_assignment

SOLVER_HAS_CAPACITY = "capacity" in inspect.signature(batched_linear_sum_assignment).parameters


def assign(cost: torch.Tensor, num_cols: torch.Tensor, capacity: Union[int, torch.Tensor], max_capacity: int,
           backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(col_for_row [P, R], status [P])`` of ``P`` problems ``cost[p, :, :num_cols[p]]`` whose
    columns take up to ``capacity`` rows each (an int, or an int64 ``[P]`` tensor on the cost's
    device whose largest value is ``max_capacity``, known on the host). No host synchronisation."""
    if isinstance(capacity, int) and capacity == 1:
        return batched_linear_sum_assignment(cost, None, num_cols, check=False, backend=backend)
    if SOLVER_HAS_CAPACITY:
        return batched_linear_sum_assignment(cost, None, num_cols, check=False, capacity=capacity, backend=backend)
    P, R, C = cost.shape
    width = max_capacity * C
    if P * R * width > 2**31 - 1:
        raise ValueError(f"capacity={max_capacity} is too large for this solver: the tiled cost would have "
                         f"{P * R * width} entries (this build's batched_linear_sum_assignment has no capacity argument)")
    # Tiled column m of problem p is column m % n of its cost, for m < capacity * n: the layout of
    # scipy's tiled matrix, valid columns first. A count outside [0, C] (the cost block is NaN then,
    # see matching_cost) is clamped only for the gather; the solver still sees it and reports it.
    n = num_cols.clamp(1, C)[:, None]
    columns = torch.arange(width, device=cost.device)[None, :] % n  # [P, width]
    tiled = cost.gather(2, columns[:, None, :].expand(P, R, width))
    tiled_cols = num_cols * capacity
    col_for_row, status = batched_linear_sum_assignment(tiled, None, tiled_cols, check=False, backend=backend)
    return torch.where(col_for_row >= 0, col_for_row % n, col_for_row), status
