"""Reference for the batched assignment: a loop over ``scipy.optimize.linear_sum_assignment``."""
from typing import Tuple

import numpy as np
import torch

# Status codes, as in detr_ops.ops.linear_sum_assignment (kept literal: the reference must not
# depend on the compiled package).
_STATUS = {"matrix contains invalid numeric entries": 1, "cost matrix is infeasible": 2}


def batched_linear_sum_assignment_reference(
    cost: torch.Tensor, num_rows=None, num_cols=None, maximize: bool = False, *, capacity=1
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(col_for_row [B, R] int64, status [B] int32)`` on the CPU, one scipy call per problem.

    Problem ``b`` is ``cost[b, :num_rows[b], :num_cols[b]]`` in float64, with its columns tiled
    ``capacity`` times (an int, or one per problem) explicitly, as H-DETR repeats its targets; a
    match to copy c of column j (column c*C + j) is reported as j. A problem scipy rejects gets
    status 1 (invalid entries) or 2 (infeasible) and all rows -1.
    """
    from scipy.optimize import linear_sum_assignment

    B, R, C = cost.shape
    dense = cost.detach().to("cpu", torch.float64).numpy()
    col_for_row = torch.full((B, R), -1, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        nr = R if num_rows is None else int(num_rows[b])
        nc = C if num_cols is None else int(num_cols[b])
        k = capacity if isinstance(capacity, int) else int(capacity[b])
        try:
            rows, cols = linear_sum_assignment(np.tile(dense[b, :nr, :nc], (1, k)), maximize=maximize)
        except ValueError as e:
            status[b] = _STATUS[str(e)]
            continue
        col_for_row[b, torch.from_numpy(rows)] = torch.from_numpy(cols % max(nc, 1))
    return col_for_row, status
