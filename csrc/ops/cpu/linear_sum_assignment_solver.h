// Exact rectangular linear sum assignment on the host: the one solver behind
// detr_ops.linear_sum_assignment (numpy) and the CPU kernel of detr_ops::batched_linear_sum_assignment.
// Host code only (std::vector workspaces), hence in cpu/ and not in common/, which holds what CPU and
// CUDA code both compile; the CUDA kernel shares ops/common/linear_sum_assignment.h with it.
//
// Algorithm: shortest augmenting paths with dual variables and no initialisation (Crouse 2016,
// "On implementing 2D rectangular assignment algorithms"), the method scipy's rectangular_lsap
// uses. We do not only reach an optimal cost: every choice scipy makes is reproduced, so the
// indices are identical, ties included:
//   * a tall matrix (more rows than columns) is solved transposed; maximize negates a copy;
//   * NaN and -inf (after the negation) are rejected before solving;
//   * each augmenting path scans the unvisited columns in the order of a `remaining` list that
//     starts reversed (nc-1, ..., 0) and loses the chosen column by swapping in its last entry;
//   * the next column is chosen by the rule in ops/common/linear_sum_assignment.h (lowest, ties
//     to a free column);
//   * path costs and duals are computed with the same floating-point operations in the same
//     order, r = ((minVal + c[i][j]) - u[i]) - v[j], so rounding matches too.
// The arithmetic is scipy's; the gains are around it: the first step of every path (all columns
// unvisited, `remaining` still reversed) is a plain reversed sweep without the indirection or the
// +inf reset, one reusable workspace replaces a dozen allocations per call, the input checks
// vectorise, and visited-row/column lists make the dual update touch only what the path visited.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops/common/linear_sum_assignment.h"

namespace detr_ops::lsa {

template <typename T>
class Solver {
 public:
  // Copies the rows x cols problem into the working matrix, transposed when tall and negated when
  // maximizing. at(i, j) returns element (i, j) of the original problem (converted to T).
  // Returns kOk or kInvalid.
  template <typename At>
  Status load(int64_t rows, int64_t cols, bool maximize, At&& at) {
    rows_ = rows;
    cols_ = cols;
    transposed_ = cols < rows;
    const int64_t n = rows * cols;
    work_.resize(static_cast<size_t>(n));
    T* w = work_.data();
    const T sign = maximize ? T(-1) : T(1);
    if (!transposed_) {
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) w[i * cols + j] = sign * static_cast<T>(at(i, j));
      }
    } else {
      // Tiles of kTile source rows: the reads stay in a few cache lines per source row and each
      // output row receives kTile consecutive values.
      constexpr int64_t kTile = 16;
      for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
        const int64_t i1 = std::min(rows, i0 + kTile);
        for (int64_t j = 0; j < cols; ++j) {
          for (int64_t i = i0; i < i1; ++i) w[j * rows + i] = sign * static_cast<T>(at(i, j));
        }
      }
    }
    return all_valid(w, n) ? kOk : kInvalid;
  }

  // Solves the problem given to load(); returns kOk or kInfeasible.
  Status solve_loaded() {
    const int64_t nr = transposed_ ? cols_ : rows_, nc = transposed_ ? rows_ : cols_;
    return solve_wide(work_.data(), nr, nc);
  }

  // Solves an nr x nc row-major problem with nr <= nc that needs no copy (not tall, not maximized)
  // directly from the caller's memory. Returns kOk, kInvalid or kInfeasible.
  Status solve_in_place(const T* cost, int64_t nr, int64_t nc) {
    rows_ = nr;
    cols_ = nc;
    transposed_ = false;
    if (!all_valid(cost, nr * nc)) return kInvalid;
    return solve_wide(cost, nr, nc);
  }

  // After a successful solve: out[i] = column matched to original row i, or -1 (rows_ entries).
  void col_for_row(int64_t* out) const {
    if (!transposed_) {
      std::copy(col4row_.begin(), col4row_.begin() + rows_, out);
      return;
    }
    std::fill(out, out + rows_, int64_t(-1));
    for (int64_t c = 0; c < cols_; ++c) out[col4row_[c]] = c;
  }

  bool transposed() const { return transposed_; }

  // Gives back the working copy of a big problem so an idle thread-local solver stays small.
  void trim(size_t keep_elements) {
    if (work_.capacity() > keep_elements) std::vector<T>().swap(work_);
  }

 private:
  // No NaN and no -inf: exactly the values with x > -inf. Four independent flags of type T (a
  // boolean reduction does not vectorise with GCC; this does, and it is a third of a small call).
  static bool all_valid(const T* x, int64_t n) {
    constexpr T kNegInf = -std::numeric_limits<T>::infinity();
    T f0 = 1, f1 = 1, f2 = 1, f3 = 1;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
      f0 = x[k] > kNegInf ? f0 : T(0);
      f1 = x[k + 1] > kNegInf ? f1 : T(0);
      f2 = x[k + 2] > kNegInf ? f2 : T(0);
      f3 = x[k + 3] > kNegInf ? f3 : T(0);
    }
    bool ok = f0 != 0 && f1 != 0 && f2 != 0 && f3 != 0;
    for (; k < n; ++k) ok = ok && x[k] > kNegInf;
    return ok;
  }

  Status solve_wide(const T* cost, int64_t nr, int64_t nc) {
    constexpr T kInf = std::numeric_limits<T>::infinity();
    u_.assign(nr, T(0));
    v_.assign(nc, T(0));
    spc_.resize(nc);
    path_.assign(nc, -1);
    col4row_.assign(nr, -1);
    row4col_.assign(nc, -1);
    remaining_.resize(nc);
    rows_seen_.resize(nr);
    cols_seen_.resize(nc);

    T* const u = u_.data();
    T* const v = v_.data();
    T* const spc = spc_.data();
    int64_t* const path = path_.data();
    int64_t* const col4row = col4row_.data();
    int64_t* const row4col = row4col_.data();
    int64_t* const remaining = remaining_.data();

    for (int64_t cur = 0; cur < nr; ++cur) {
      // Shortest augmenting path from row `cur` (Dijkstra over reduced costs).
      for (int64_t k = 0; k < nc; ++k) remaining[k] = nc - 1 - k;
      int64_t num_remaining = nc, num_rows_seen = 0, num_cols_seen = 0;
      T min_val = 0;
      int64_t i = cur, sink = -1;
      bool first_step = true;
      while (sink < 0) {
        rows_seen_[num_rows_seen++] = i;
        const T* row = cost + i * nc;
        const T ui = u[i];
        T lowest = kInf;
        int64_t index = -1;
        if (first_step) {
          // First step of a path: every column is unvisited with path cost +inf and `remaining`
          // is nc-1, ..., 0. So the scan is a plain reversed sweep, and every column takes r
          // (an r of +inf leaves +inf; its path entry is never followed). This sweep is most of
          // the work for the wide DETR shapes, where paths are short.
          for (int64_t j = nc - 1; j >= 0; --j) {
            const T r = min_val + row[j] - ui - v[j];
            spc[j] = r;
            path[j] = i;
            if (r < lowest || (r == lowest && row4col[j] < 0)) {
              lowest = r;
              index = nc - 1 - j;
            }
          }
          first_step = false;
        } else {
          for (int64_t it = 0; it < num_remaining; ++it) {
            const int64_t j = remaining[it];
            const T r = min_val + row[j] - ui - v[j];
            if (r < spc[j]) {
              path[j] = i;
              spc[j] = r;
            }
            const T s = spc[j];
            if (s < lowest || (s == lowest && row4col[j] < 0)) {
              lowest = s;
              index = it;
            }
          }
        }
        min_val = lowest;
        if (min_val == kInf) return kInfeasible;
        const int64_t j = remaining[index];
        if (row4col[j] < 0) {
          sink = j;
        } else {
          i = row4col[j];
        }
        cols_seen_[num_cols_seen++] = j;
        remaining[index] = remaining[--num_remaining];
      }

      // Dual update over the visited rows and columns only (every other term is zero in scipy's
      // full sweep). cur has no matched column yet, so it takes min_val alone.
      u[cur] += min_val;
      for (int64_t k = 1; k < num_rows_seen; ++k) {
        const int64_t r = rows_seen_[k];
        u[r] += min_val - spc[col4row[r]];
      }
      for (int64_t k = 0; k < num_cols_seen; ++k) {
        const int64_t c = cols_seen_[k];
        v[c] -= min_val - spc[c];
      }

      // Flip the path: walk back from the sink, each row taking the column it was reached by.
      int64_t j = sink;
      for (;;) {
        const int64_t r = path[j];
        row4col[j] = r;
        const int64_t previous = col4row[r];
        col4row[r] = j;
        j = previous;
        if (r == cur) break;
      }
    }
    return kOk;
  }

  int64_t rows_ = 0, cols_ = 0;
  bool transposed_ = false;
  std::vector<T> work_, u_, v_, spc_;
  std::vector<int64_t> path_, col4row_, row4col_, remaining_, rows_seen_, cols_seen_;
};

}  // namespace detr_ops::lsa
