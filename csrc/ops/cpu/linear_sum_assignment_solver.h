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
//   * the next column is chosen by scipy's rule (lowest path cost; among equal ones a free column
//     scanned last, else the assigned one scanned first), restated in
//     ops/common/linear_sum_assignment.h as an order on (cost, tie key) that any scan order gives;
//   * path costs and duals are computed with the same floating-point operations in the same
//     order, r = ((minVal + c[i][j]) - u[i]) - v[j], so rounding matches too.
//
// The arithmetic is scipy's; the speed comes from the layout around it:
//   * the order-independent rule lets each step scan the columns in memory order, 4 at a time
//     (AVX2; 2 with SSE2 or NEON where the CPU lacks it, picked at run time, cpu/cpu_isa.h), instead of
//     following `remaining`: every array is read contiguously and nothing is gathered. Each column
//     carries its tie key (a double, exact for integers below 2^53): the key of its current scan
//     position, or -1 once visited in this path (visited columns are skipped, as scipy's scan skips
//     them). `remaining` itself is kept only to know which column moves into a vacated position,
//     and is filled only when a path needs a second step;
//   * the first step of a path (every column unvisited at path cost +inf) skips the comparisons
//     with the stored path costs;
//   * one reusable workspace replaces a dozen allocations per call, the input checks vectorise,
//     and visited-row/column lists make the dual update touch only what the path visited.
//
// Square problems (n >= kWarmMinSize, finite costs) first try a faster route: a Jonker-Volgenant
// start matches most rows cheaply and scipy's searches finish the rest; the answer is kept only
// when a certificate proves it is the matching scipy returns (no other matching within scipy's
// rounding of its cost), else scipy's route runs from scratch. See linear_sum_assignment_warm_start.h.
//
// Capacity (column j may take up to k rows) is scipy on the cost with its columns tiled k times
// (copy c of column j is column c*C + j), solved on a virtual tiled problem: the physical block is
// loaded once and column (or, transposed, row) t of the virtual problem reads physical column
// (row) t mod C. Nothing of size k*R*C is ever built.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "ops/common/linear_sum_assignment.h"
#include "ops/cpu/cpu_isa.h"
#include "ops/cpu/linear_sum_assignment_lanes.h"
#include "ops/cpu/linear_sum_assignment_warm_start.h"

namespace detr_ops::lsa {

namespace scan {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // see linear_sum_assignment_lanes.h

// The best column of a scan: lowest path cost, then largest tie key (see tie_key).
struct Best {
  double cost = std::numeric_limits<double>::infinity();
  double key = -1;
  int64_t col = -1;

  DETR_LSA_INLINE void offer(double c, double k, int64_t j) {
    if (better(c, k, cost, key)) {
      cost = c;
      key = k;
      col = j;
    }
  }
};

// One step of the shortest-path search over the n columns [col0, col0 + n): c is the cost row
// restricted to them (physical memory), every other array is indexed by virtual column.
//   kFirst: the path's first step. Every column is unvisited with path cost +inf, so the path cost
//     becomes r where r < +inf (scipy's update) and the tie key is the column's base key (its key
//     at scan position nc-1-j, where the reversed `remaining` puts it); the keys are written out.
//   otherwise: visited columns (key < 0) are skipped; the others take r where it is lower.
// Then the column is offered to `best` under scipy's rule. Lanes keep their own best and are
// combined at the end: the keys are distinct, so the winner does not depend on the order.
template <int W, bool kFirst>
DETR_LSA_INLINE void step(const double* __restrict c, int64_t n, int64_t col0, double mv, double ui, int64_t i,
                          const double* __restrict v, double* __restrict spc, double* __restrict key,
                          const double* __restrict base_key, int64_t* __restrict path, Best& best) {
  typedef typename Lanes<W>::d d;
  typedef typename Lanes<W>::i iv;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const d zero = {}, inf = zero + kInf;
  d best_cost = inf, best_key = zero - 1.0, best_col = zero - 1.0, col = zero;
  for (int l = 0; l < W; ++l) col[l] = static_cast<double>(col0 + l);
  const iv row = iv{} + i;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const d r = ((mv + load<d>(c + j)) - ui) - load<d>(v + j);
    d s, k;
    if constexpr (kFirst) {
      const iv improve = r < inf;
      s = improve ? r : inf;
      k = load<d>(base_key + j);
      store(key + j, k);
      store(path + j, iv(improve ? row : load<iv>(path + j)));
    } else {
      k = load<d>(key + j);
      s = load<d>(spc + j);
      const iv improve = (k >= zero) & (r < s);
      s = improve ? r : s;
      store(path + j, iv(improve ? row : load<iv>(path + j)));
    }
    store(spc + j, s);
    iv take = (s < best_cost) | ((s == best_cost) & (k > best_key));
    if constexpr (!kFirst) take &= k >= zero;
    best_cost = take ? s : best_cost;
    best_key = take ? k : best_key;
    best_col = take ? col : best_col;
    col += double(W);
  }
  for (int l = 0; l < W; ++l) {
    if (best_col[l] >= 0) best.offer(best_cost[l], best_key[l], static_cast<int64_t>(best_col[l]));
  }
  for (; j < n; ++j) {
    const double r = ((mv + c[j]) - ui) - v[j];
    double k;
    if constexpr (kFirst) {
      k = base_key[j];
      key[j] = k;
      spc[j] = kInf;
    } else {
      k = key[j];
      if (k < 0) continue;
    }
    if (r < spc[j]) {
      spc[j] = r;
      path[j] = i;
    }
    best.offer(spc[j], k, col0 + j);
  }
}

#pragma GCC diagnostic pop

}  // namespace scan

class Solver {
 public:
  // Copies the rows x cols problem into the working matrix, transposed when the (virtual, columns
  // tiled `copies` times) problem is tall and negated when maximizing. at(i, j) returns element
  // (i, j) of the original problem as a double. copies >= 1. Returns kOk or kInvalid.
  template <typename At>
  Status load(int64_t rows, int64_t cols, bool maximize, int64_t copies, At&& at) {
    set_shape(rows, cols, copies);
    const int64_t n = rows * cols;
    work_.resize(static_cast<size_t>(n));
    double* w = work_.data();
    const double sign = maximize ? -1.0 : 1.0;
    if (!transposed_) {
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) w[i * cols + j] = sign * at(i, j);
      }
    } else {
      // Tiles of kTile source rows: the reads stay in a few cache lines per source row and each
      // output row receives kTile consecutive values.
      constexpr int64_t kTile = 16;
      for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
        const int64_t i1 = std::min(rows, i0 + kTile);
        for (int64_t j = 0; j < cols; ++j) {
          for (int64_t i = i0; i < i1; ++i) w[j * rows + i] = sign * at(i, j);
        }
      }
    }
    return all_valid(w, n) ? kOk : kInvalid;
  }

  // Solves the problem given to load(); returns kOk or kInfeasible.
  Status solve_loaded() { return solve(work_.data()); }

  // Solves an nr x nc row-major problem with nr <= nc that needs no copy (not tall, not maximized,
  // no capacity) directly from the caller's memory. Returns kOk, kInvalid or kInfeasible.
  Status solve_in_place(const double* cost, int64_t nr, int64_t nc) {
    set_shape(nr, nc, 1);
    if (!all_valid(cost, nr * nc)) return kInvalid;
    return solve(cost);
  }

  // After a successful solve: out[i] = column matched to original row i, or -1 (rows_ entries).
  // With copies, a virtual column t is reported as the original column t mod cols.
  void col_for_row(int64_t* out) const {
    if (!transposed_) {
      for (int64_t i = 0; i < rows_; ++i) out[i] = copies_ == 1 ? col4row_[i] : col4row_[i] % cols_;
      return;
    }
    std::fill(out, out + rows_, int64_t(-1));
    for (int64_t t = 0; t < nr_; ++t) out[col4row_[t]] = t % cols_;
  }

  bool transposed() const { return transposed_; }

  // How the last solve() found its answer (tests and benchmarks): scipy's loop alone, the warm
  // route with its certificate, or the warm route rejected and scipy's loop after it.
  enum Route { kScipyRoute = 0, kWarmRoute = 1, kWarmThenScipyRoute = 2 };
  Route route() const { return route_; }

  // Gives back the working copy of a big problem so an idle thread-local solver stays small.
  void trim(size_t keep_elements) {
    if (work_.capacity() > keep_elements) std::vector<double>().swap(work_);
  }

 private:
  // The virtual problem: columns tiled `copies` times, transposed when that is tall. Physical
  // matrix: rp_ x cp_ (rows x cols, or cols x rows transposed); virtual nr_ x nc_ with nr_ <= nc_,
  // virtual row t reading physical row t mod rp_ and virtual column t physical column t mod cp_.
  void set_shape(int64_t rows, int64_t cols, int64_t copies) {
    rows_ = rows;
    cols_ = cols;
    copies_ = copies;
    transposed_ = copies * cols < rows;
    rp_ = transposed_ ? cols : rows;
    cp_ = transposed_ ? rows : cols;
    nr_ = transposed_ ? copies * cols : rows;
    nc_ = transposed_ ? rows : copies * cols;
  }

  // No NaN and no -inf: exactly the values with x > -inf. Four independent flags (a boolean
  // reduction does not vectorise with GCC; this does, and it is a third of a small call).
  static bool all_valid(const double* x, int64_t n) {
    constexpr double kNegInf = -std::numeric_limits<double>::infinity();
    double f0 = 1, f1 = 1, f2 = 1, f3 = 1;
    int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
      f0 = x[k] > kNegInf ? f0 : 0.0;
      f1 = x[k + 1] > kNegInf ? f1 : 0.0;
      f2 = x[k + 2] > kNegInf ? f2 : 0.0;
      f3 = x[k + 3] > kNegInf ? f3 : 0.0;
    }
    bool ok = f0 != 0 && f1 != 0 && f2 != 0 && f3 != 0;
    for (; k < n; ++k) ok = ok && x[k] > kNegInf;
    return ok;
  }

  // The AVX2 build where the CPU has it (cpu/cpu_isa.h), else the baseline build: the same code
  // with 4 or 2 lanes. (No multiply feeds an add here, so FMA contraction cannot change a bit.)
  Status solve(const double* cost) { return cpu::cpu_has_avx2() ? solve_avx2(cost) : solve_baseline(cost); }
  DETR_TARGET_AVX2 Status solve_avx2(const double* cost) { return solve_wide<4>(cost); }
  Status solve_baseline(const double* cost) { return solve_wide<2>(cost); }

  // One step of the search from row i over every virtual column (segment by segment of cp_
  // columns, each reading the same physical row).
  template <int W, bool kFirst>
  DETR_LSA_INLINE scan::Best scan_columns(const double* cost, int64_t i, double mv) {
    scan::Best best;
    const double* row = cost + (i % rp_) * cp_;
    for (int64_t col0 = 0; col0 < nc_; col0 += cp_) {
      scan::step<W, kFirst>(row, cp_, col0, mv, u_[i], i, v_.data() + col0, spc_.data() + col0, key_.data() + col0,
                         base_key_.data() + col0, path_.data() + col0, best);
    }
    return best;
  }

  // Buffers for a fresh start: zero duals, nothing matched (scipy's initial state).
  void reset() {
    const int64_t nr = nr_, nc = nc_;
    u_.assign(nr, 0.0);
    v_.assign(nc, 0.0);
    spc_.resize(nc);
    key_.resize(nc);
    base_key_.resize(nc);
    path_.assign(nc, -1);
    col4row_.assign(nr, -1);
    row4col_.assign(nc, -1);
    remaining_.resize(nc);
    rows_seen_.resize(nr);
    cols_seen_.resize(nc);
  }

  // Square problems of this size and more, with finite costs, try the warm route first
  // (linear_sum_assignment_warm_start.h); smaller ones solve in a few microseconds either way.
  static constexpr int64_t kWarmMinSize = 32;

  template <int W>
  DETR_LSA_INLINE Status solve_wide(const double* cost) {
    double cabs = 0, clo = 0, chi = 0;
    route_ = kScipyRoute;
    if (nr_ == nc_ && copies_ == 1 && nr_ >= kWarmMinSize && warm::finite_range<W>(cost, nr_ * nc_, &cabs, &clo, &chi)) {
      reset();
      warm::start<W>(cost, nr_, u_.data(), v_.data(), col4row_.data(), row4col_.data(), free_rows_, scratch_);
      if (augment<W>(cost) == kOk &&
          warm::unique_optimum<W>(cost, nr_, u_.data(), v_.data(), col4row_.data(), row4col_.data(), cabs, clo, chi)) {
        route_ = kWarmRoute;
        return kOk;
      }
      route_ = kWarmThenScipyRoute;
    }
    reset();
    return augment<W>(cost);
  }

  // scipy's loop: a shortest augmenting path from every unmatched row, in row order. From reset()
  // this is scipy's algorithm choice for choice; after warm::start it finishes that matching.
  template <int W>
  DETR_LSA_INLINE Status augment(const double* cost) {
    const int64_t nr = nr_, nc = nc_;
    // Tie key of column j at its first-step scan position nc-1-j (tie_key).
    for (int64_t j = 0; j < nc; ++j) base_key_[j] = static_cast<double>(tie_key(nc - 1 - j, row4col_[j] < 0, nc));

    double* const u = u_.data();
    double* const v = v_.data();
    double* const spc = spc_.data();
    double* const key = key_.data();
    int64_t* const path = path_.data();
    int64_t* const col4row = col4row_.data();
    int64_t* const row4col = row4col_.data();
    int64_t* const remaining = remaining_.data();
    int64_t* const rows_seen = rows_seen_.data();
    int64_t* const cols_seen = cols_seen_.data();
    constexpr double kInf = std::numeric_limits<double>::infinity();

    for (int64_t cur = 0; cur < nr; ++cur) {
      if (col4row[cur] >= 0) continue;  // matched by warm::start
      // Shortest augmenting path from row `cur` (Dijkstra over reduced costs).
      int64_t i = cur, sink = -1, num_remaining = nc, num_rows_seen = 0, num_cols_seen = 0;
      double min_val = 0;
      bool first = true;
      while (sink < 0) {
        rows_seen[num_rows_seen++] = i;
        const scan::Best best = first ? scan_columns<W, true>(cost, i, min_val) : scan_columns<W, false>(cost, i, min_val);
        min_val = best.cost;
        if (min_val == kInf) return kInfeasible;
        const int64_t j = best.col;
        cols_seen[num_cols_seen++] = j;
        if (row4col[j] < 0) {
          sink = j;
          break;
        }
        if (first) {
          for (int64_t k = 0; k < nc; ++k) remaining[k] = nc - 1 - k;
          first = false;
        }
        // scipy's remaining[index] = remaining[--num_remaining]: the last entry moves into j's
        // position and takes that position's key; j leaves the scan.
        const int64_t kj = static_cast<int64_t>(key[j]);
        const int64_t index = kj >= nc ? kj - nc : nc - 1 - kj;
        const int64_t moved = remaining[--num_remaining];
        remaining[index] = moved;
        key[moved] = static_cast<double>(tie_key(index, row4col[moved] < 0, nc));
        key[j] = -1;
        i = row4col[j];
      }

      // Dual update over the visited rows and columns only (every other term is zero in scipy's
      // full sweep). cur has no matched column yet, so it takes min_val alone.
      u[cur] += min_val;
      for (int64_t k = 1; k < num_rows_seen; ++k) {
        const int64_t r = rows_seen[k];
        u[r] += min_val - spc[col4row[r]];
      }
      for (int64_t k = 0; k < num_cols_seen; ++k) {
        const int64_t c = cols_seen[k];
        v[c] -= min_val - spc[c];
      }

      // Flip the path: walk back from the sink, each row taking the column it was reached by.
      base_key_[sink] = static_cast<double>(tie_key(nc - 1 - sink, false, nc));
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

  int64_t rows_ = 0, cols_ = 0, copies_ = 1, rp_ = 0, cp_ = 0, nr_ = 0, nc_ = 0;
  bool transposed_ = false;
  Route route_ = kScipyRoute;
  std::vector<double> work_, u_, v_, spc_, key_, base_key_;
  std::vector<int64_t> path_, col4row_, row4col_, remaining_, rows_seen_, cols_seen_, free_rows_, scratch_;
};

}  // namespace detr_ops::lsa
