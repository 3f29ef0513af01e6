"""Reference for the batched assignment: a loop over ``scipy.optimize.linear_sum_assignment``."""
from typing import Tuple

import torch

# Status codes, as in detr_ops.ops.linear_sum_assignment (kept literal: the reference must not
# depend on the compiled package).
_STATUS = {"matrix contains invalid numeric entries": 1, "cost matrix is infeasible": 2}


def batched_linear_sum_assignment_reference(
    cost: torch.Tensor, num_rows=None, num_cols=None, maximize: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(col_for_row [B, R] int64, status [B] int32)`` on the CPU, one scipy call per problem.

    Problem ``b`` is ``cost[b, :num_rows[b], :num_cols[b]]`` in float64; a problem scipy rejects
    gets status 1 (invalid entries) or 2 (infeasible) and all rows -1.
    """
    from scipy.optimize import linear_sum_assignment

    B, R, C = cost.shape
    dense = cost.detach().to("cpu", torch.float64).numpy()
    col_for_row = torch.full((B, R), -1, dtype=torch.int64)
    status = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        nr = R if num_rows is None else int(num_rows[b])
        nc = C if num_cols is None else int(num_cols[b])
        try:
            rows, cols = linear_sum_assignment(dense[b, :nr, :nc], maximize=maximize)
        except ValueError as e:
            status[b] = _STATUS[str(e)]
            continue
        col_for_row[b, torch.from_numpy(rows)] = torch.from_numpy(cols)
    return col_for_row, status
