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
  kBadSize = 3,     // num_rows / num_cols outside [0, R] / [0, C], or a capacity outside [0, bound]
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

// Capacity k (column j takes up to k rows) is scipy on the rows x (k * cols) matrix whose copy c of
// column j is column c * cols + j. Every k >= rows + ceil(rows / cols) gives the same matching as
// that value, so solvers use effective_copies(k, rows, cols) copies: the work stays bounded by
// rows * cols + rows + cols columns whatever k is, and k * cols cannot overflow.
//
// Why (a scipy run on the tiled matrix, N = k * cols >= rows columns, the wide orientation):
//  * a path has at most rows steps, and step t moves the entry at list position N-1-t, which
//    initially holds column t; by induction only columns with index < rows ever move. Every other
//    column x stays at position N-1-x, so a lower index means a later scan position.
//  * a fresh copy (never assigned, so never visited: v = 0) of column j has the same path cost as
//    every other fresh copy of j in every step. Among equal free columns scipy keeps the one
//    scanned last: the fresh copy of j with the lowest index >= rows beats every higher fresh copy.
//  * at most rows - 1 columns are assigned while a path runs, and copies c >= ceil(rows / cols) of
//    column j all have index >= rows; with k >= rows + ceil(rows / cols) copies at least one of
//    them is fresh at any time. So copies with index >= (rows + ceil(rows / cols)) * cols are never
//    chosen, and adding them only prepends never-chosen entries to `remaining`, shifting every
//    other position (and key) by the same amount: every choice is unchanged.
// Empty problems need no copy (0); callers reject a negative capacity before asking.
DETR_HD int64_t effective_copies(int64_t capacity, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return 0;
  constexpr int64_t kMax = 0x7fffffffffffffffLL;
  const int64_t extra = (rows - 1) / cols + 1;  // ceil(rows / cols) without overflow
  const int64_t enough = rows > kMax - extra ? kMax : rows + extra;
  return capacity < enough ? capacity : enough;
}

}  // namespace detr_ops::lsa
