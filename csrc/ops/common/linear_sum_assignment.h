// Pieces of the linear sum assignment solver that the host solver
// (ops/cpu/linear_sum_assignment_solver.h) and the CUDA kernel share: the status codes and the rule
// that picks the next column of a shortest augmenting path.
//
// Exactness note: every backend reproduces scipy's choices, so the selection rule below is the
// sequential scan of scipy's rectangular_lsap restated as an order on (path cost, position) pairs,
// which a parallel reduction can evaluate in any order and still pick the same column.
#pragma once

#include <cstdint>

#include "ops/common/hostdevice.h"

namespace detr_ops::lsa {

// Per-problem outcome, returned by every backend in the status tensor.
enum Status : int32_t {
  kOk = 0,
  kInvalid = 1,     // NaN, -inf, or +inf when maximizing ("matrix contains invalid numeric entries")
  kInfeasible = 2,  // +inf edges leave no complete matching ("cost matrix is infeasible")
  kBadSize = 3,     // num_rows / num_cols outside [0, R] / [0, C] (only the batched op can see this)
};

// scipy scans the remaining columns in the order of its `remaining` array and keeps a candidate
// when its path cost is strictly lower, or equal and the column is unassigned. The winner is
// therefore: the lowest cost; among equal costs, the unassigned column scanned last if there is
// one, else the (assigned) column scanned first. tie_key encodes that as "larger key wins" so a
// reduction over (cost, key) is order independent: unassigned columns get keys [n, 2n) growing
// with their scan position, assigned ones [0, n) shrinking with it.
DETR_HD int64_t tie_key(int64_t position, bool unassigned, int64_t n) {
  return unassigned ? n + position : n - 1 - position;
}

// True when candidate (cost_a, key_a) beats (cost_b, key_b).
template <typename T>
DETR_HD bool better(T cost_a, int64_t key_a, T cost_b, int64_t key_b) {
  return cost_a < cost_b || (cost_a == cost_b && key_a > key_b);
}

}  // namespace detr_ops::lsa
