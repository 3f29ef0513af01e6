// The fast route of the host solver for square problems: a Jonker-Volgenant start, then a proof
// that its answer is the one scipy returns.
//
// scipy's algorithm starts every shortest path from zero duals and an empty matching, so a
// random n x n problem needs n long searches. Jonker and Volgenant (1987) start instead from a
// column reduction and an augmenting row reduction, which match most rows with O(n) work each,
// leaving few rows for the shortest-path searches (lap.lapjv and lapx are built on that start).
// Their matching is optimal, but where several matchings are optimal it may be another one than
// scipy's, which depends on scipy's scan order and rounding.
//
// So the solver (linear_sum_assignment_solver.h) keeps the warm answer only with a certificate
// that no other matching comes within scipy's rounding of its cost; otherwise it solves again on
// scipy's route. Only square problems take this route: on wide ones (after transposing, every
// DETR shape) scipy's searches are short already, and a warm start measured no faster (100 x 900,
// 300 x 900, 1000 x 1100). The certificate, for an n x n problem with final duals u, v (reduced
// cost r = c - u - v):
//   * every other matching M' differs from ours, M, by alternating cycles, and
//     cost(M') - cost(M) = sum over those cycles of (r on M' edges) - (r on M edges), exactly;
//   * the computed r carries an error of at most e = 4 eps (|c| + |u| + |v|) (two roundings), and
//     the duals are feasible and tight only up to the measured violations neg (most negative r)
//     and tight (largest |r| on M), so a cycle of at most n M' edges with one of r > T costs more
//     than T - n (neg + tight + 2 e) - e;
//   * scipy's answer M_s is optimal up to its own rounding: each of its n paths computes
//     ((minVal + c) - u) - v with |minVal|, |u|, |v| bounded by |c|max + n (cmax - cmin), three
//     roundings each, so cost(M_s) <= cost(optimum) + delta with
//     delta = 32 n eps (|c|max + n (cmax - cmin)), a bound with a wide margin;
//   * with T = delta + n (neg + tight + 2 e) + e: if no alternating cycle uses only non-M edges of
//     computed r <= T + e ("near-tight" edges), every M' != M costs more than cost(M) + delta, so
//     M_s = M. The check: the graph with an arc from row i to the row holding column j for every
//     near-tight (i, j) must have no cycle.
// Integer costs with ties, or floats with near-ties, have near-tight cycles and go to scipy's route;
// random float costs almost never do (a few near-tight edges in a 2000 x 2000 problem).
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops/cpu/linear_sum_assignment_lanes.h"

namespace detr_ops::lsa::warm {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // see linear_sum_assignment_lanes.h

// Every function here is a W-lane template inlined into the solver's AVX2 or baseline build. The
// O(rows x cols) passes are vectorised with two accumulators per quantity: as scalar dependency
// chains they cost as much as a whole scipy solve of a DETR-shaped (100 x 900) problem.
constexpr double kInf = std::numeric_limits<double>::infinity();

// Largest |c|, smallest and largest c of a matrix without NaN or -inf (rejected before); false if
// an entry is +inf (the warm route needs finite costs: no forbidden pairs).
template <int W>
DETR_LSA_INLINE bool finite_range(const double* c, int64_t count, double* abs_max, double* lo, double* hi) {
  typedef typename scan::Lanes<W>::d d;
  d mn0 = d{} + kInf, mn1 = mn0, mx0 = d{} - kInf, mx1 = mx0;
  int64_t k = 0;
  for (; k + 2 * W <= count; k += 2 * W) {
    const d a = scan::load<d>(c + k), b = scan::load<d>(c + k + W);
    mn0 = a < mn0 ? a : mn0;
    mn1 = b < mn1 ? b : mn1;
    mx0 = a > mx0 ? a : mx0;
    mx1 = b > mx1 ? b : mx1;
  }
  double mn = kInf, mx = -kInf;
  for (int l = 0; l < W; ++l) {
    mn = std::min({mn, mn0[l], mn1[l]});
    mx = std::max({mx, mx0[l], mx1[l]});
  }
  for (; k < count; ++k) {
    mn = std::min(mn, c[k]);
    mx = std::max(mx, c[k]);
  }
  if (!(mx < kInf)) return false;
  *lo = mn;
  *hi = mx;
  *abs_max = std::max(std::fabs(mn), std::fabs(mx));
  return true;
}

// The lowest and second lowest of row[j] - v[j] over j < n (n >= 2) and their columns.
struct TwoLowest {
  double u1 = kInf, u2 = kInf;
  int64_t j1 = 0, j2 = 0;

  void offer(double h, int64_t j) {
    if (h < u2) {
      if (h < u1) {
        u2 = u1;
        j2 = j1;
        u1 = h;
        j1 = j;
      } else {
        u2 = h;
        j2 = j;
      }
    }
  }
};

template <int W>
DETR_LSA_INLINE TwoLowest two_lowest(const double* row, const double* v, int64_t n) {
  typedef typename scan::Lanes<W>::d d;
  typedef typename scan::Lanes<W>::i iv;
  d m1 = d{} + kInf, m2 = m1, i1 = d{}, i2 = d{}, col = d{};
  for (int l = 0; l < W; ++l) col[l] = l;
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const d h = scan::load<d>(row + j) - scan::load<d>(v + j);
    const iv lt1 = h < m1, lt2 = h < m2;
    m2 = lt1 ? m1 : (lt2 ? h : m2);
    i2 = lt1 ? i1 : (lt2 ? col : i2);
    m1 = lt1 ? h : m1;
    i1 = lt1 ? col : i1;
    col += double(W);
  }
  // The two lowest of all are among each lane's two lowest and the tail.
  TwoLowest t;
  for (int l = 0; l < W; ++l) {
    t.offer(m1[l], static_cast<int64_t>(i1[l]));
    t.offer(m2[l], static_cast<int64_t>(i2[l]));
  }
  for (; j < n; ++j) t.offer(row[j] - v[j], j);
  return t;
}

// Jonker-Volgenant's start on the n x n row-major cost c: a column reduction, then two rounds of
// augmenting row reduction. Writes v, u (0 for rows left free), col4row / row4col (-1 where
// unmatched), and the rows left free: every matched row's column attains its row minimum of c - v
// up to rounding, the state scipy's searches continue from.
template <int W>
DETR_LSA_INLINE void start(const double* c, int64_t n, double* u, double* v, int64_t* col4row, int64_t* row4col,
                           std::vector<int64_t>& free_rows, std::vector<int64_t>& scratch) {
  // Column reduction: v_j = min_i c_ij (a row sweep, so the reads stay contiguous); each column,
  // last to first, takes its minimising row if that row is still free.
  scratch.assign(n, 0);
  int64_t* argmin = scratch.data();
  std::copy(c, c + n, v);
  for (int64_t i = 1; i < n; ++i) {
    const double* row = c + i * n;
    for (int64_t j = 0; j < n; ++j) {
      const bool lower = row[j] < v[j];
      v[j] = lower ? row[j] : v[j];
      argmin[j] = lower ? i : argmin[j];
    }
  }
  std::fill(col4row, col4row + n, int64_t(-1));
  std::fill(row4col, row4col + n, int64_t(-1));
  for (int64_t j = n - 1; j >= 0; --j) {
    const int64_t i = argmin[j];
    if (col4row[i] < 0) {
      col4row[i] = j;
      row4col[j] = i;
    }
  }
  free_rows.clear();
  for (int64_t i = 0; i < n; ++i) {
    if (col4row[i] < 0) free_rows.push_back(i);
  }

  // Augmenting row reduction: a free row takes the column of its lowest c - v; when that is
  // strictly below the second lowest, the column's v drops by the difference (so the row's two
  // best columns tie) and the row it evicts is served next; on a tie the row takes the second
  // column instead and an evicted row waits for the next round. Each round stops after n steps:
  // a row evicted again and again costs O(n) per step, and past about n steps the vectorised
  // shortest-path searches finish the remaining rows sooner (measured at 100, 1000 and 2000: 8 n
  // steps per round left 0-15 rows free but took twice as long overall).
  for (int round = 0; round < 2 && !free_rows.empty(); ++round) {
    scratch.swap(free_rows);
    free_rows.clear();
    const int64_t queued = static_cast<int64_t>(scratch.size());
    int64_t k = 0, steps = 0;
    while (k < queued) {
      const int64_t i = scratch[k++];
      if (++steps > n) {
        free_rows.push_back(i);
        continue;
      }
      const TwoLowest t = two_lowest<W>(c + i * n, v, n);
      int64_t j1 = t.j1;
      int64_t evicted = row4col[j1];
      const bool strict = t.u1 < t.u2;
      if (strict) {
        v[j1] -= t.u2 - t.u1;
      } else if (evicted >= 0) {
        j1 = t.j2;
        evicted = row4col[j1];
      }
      if (evicted >= 0) col4row[evicted] = -1;
      col4row[i] = j1;
      row4col[j1] = i;
      if (evicted >= 0) {
        if (strict) {
          scratch[--k] = evicted;  // served next, in this round
        } else {
          free_rows.push_back(evicted);
        }
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) u[i] = col4row[i] >= 0 ? c[i * n + col4row[i]] - v[col4row[i]] : 0.0;
}

// Row i's smallest computed reduced cost (row[j] - ui) - v[j], and how many are <= cap.
template <int W>
DETR_LSA_INLINE double reduced_row(const double* row, double ui, const double* v, int64_t n, double cap,
                                   int64_t* near) {
  typedef typename scan::Lanes<W>::d d;
  typedef typename scan::Lanes<W>::i iv;
  d mn0 = d{} + kInf, mn1 = mn0;
  iv cnt0 = iv{}, cnt1 = iv{};
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const d a = (scan::load<d>(row + j) - ui) - scan::load<d>(v + j);
    const d b = (scan::load<d>(row + j + W) - ui) - scan::load<d>(v + j + W);
    mn0 = a < mn0 ? a : mn0;
    mn1 = b < mn1 ? b : mn1;
    cnt0 -= iv(a <= cap);  // a true comparison is -1
    cnt1 -= iv(b <= cap);
  }
  double mn = kInf;
  int64_t count = 0;
  for (int l = 0; l < W; ++l) {
    mn = std::min({mn, mn0[l], mn1[l]});
    count += cnt0[l] + cnt1[l];
  }
  for (; j < n; ++j) {
    const double r = (row[j] - ui) - v[j];
    mn = std::min(mn, r);
    count += r <= cap;
  }
  *near = count;
  return mn;
}

// The certificate above for a complete matching of the n x n cost c with duals u, v. cmax_abs,
// clo, chi: finite_range of c. True when scipy's answer is provably this matching.
template <int W>
DETR_LSA_INLINE bool unique_optimum(const double* c, int64_t n, const double* u, const double* v,
                                    const int64_t* col4row, const int64_t* row4col, double cmax_abs, double clo,
                                    double chi) {
  constexpr double eps = DBL_EPSILON;
  const double nd = static_cast<double>(n);
  double u_abs = 0, v_abs = 0, neg = 0, tight = 0;
  for (int64_t k = 0; k < n; ++k) {
    u_abs = std::max(u_abs, std::fabs(u[k]));
    v_abs = std::max(v_abs, std::fabs(v[k]));
  }
  const double e = 4 * eps * (cmax_abs + u_abs + v_abs);
  const double delta = 32 * nd * eps * (cmax_abs + nd * (chi - clo));
  // Edges are collected against a cap fixed before the violations are known; the final threshold
  // must stay below it (it does unless the duals are far off, and then the proof fails anyway).
  const double cap = 2 * delta + 4 * e;
  if (!std::isfinite(cap)) return false;  // magnitudes near overflow: no proof, scipy's route
  std::vector<int64_t> arcs;  // pairs (from row, to row)
  for (int64_t i = 0; i < n; ++i) {
    const double* row = c + i * n;
    int64_t near = 0;
    const double mn = reduced_row<W>(row, u[i], v, n, cap, &near);
    const int64_t mine = col4row[i];
    const double r_mine = (row[mine] - u[i]) - v[mine];
    tight = std::max(tight, std::fabs(r_mine));
    neg = std::max(neg, -mn);
    if (near > (r_mine <= cap ? 1 : 0)) {
      for (int64_t j = 0; j < n; ++j) {
        if (j != mine && (row[j] - u[i]) - v[j] <= cap) {
          arcs.push_back(i);
          arcs.push_back(row4col[j]);
        }
      }
      if (static_cast<int64_t>(arcs.size()) > 16 * n) return false;  // a tie-ridden problem
    }
  }
  const double threshold = delta + nd * (neg + tight + 2 * e) + e;
  if (!(threshold + e <= cap)) return false;
  if (arcs.empty()) return true;  // the usual case

  // No cycle among the collected arcs (a superset of those below the final threshold: a cycle
  // among them also rejects, which only costs a fallback). Kahn's algorithm: the graph is acyclic
  // iff removing rows without incoming arcs, repeatedly, removes them all.
  const int64_t m = static_cast<int64_t>(arcs.size()) / 2;
  std::vector<int64_t> indegree(n, 0), start_of(n + 1, 0), targets(m), ready;
  for (int64_t a = 0; a < m; ++a) {
    ++start_of[arcs[2 * a] + 1];
    ++indegree[arcs[2 * a + 1]];
  }
  for (int64_t i = 0; i < n; ++i) start_of[i + 1] += start_of[i];
  {
    std::vector<int64_t> fill(start_of.begin(), start_of.end() - 1);
    for (int64_t a = 0; a < m; ++a) targets[fill[arcs[2 * a]]++] = arcs[2 * a + 1];
  }
  for (int64_t i = 0; i < n; ++i) {
    if (indegree[i] == 0) ready.push_back(i);
  }
  int64_t removed = 0;
  while (!ready.empty()) {
    const int64_t i = ready.back();
    ready.pop_back();
    ++removed;
    for (int64_t a = start_of[i]; a < start_of[i + 1]; ++a) {
      if (--indegree[targets[a]] == 0) ready.push_back(targets[a]);
    }
  }
  return removed == n;
}

#pragma GCC diagnostic pop

}  // namespace detr_ops::lsa::warm
