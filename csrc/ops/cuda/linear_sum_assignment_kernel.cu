// CUDA kernel of detr_ops::batched_linear_sum_assignment (schema in ops/linear_sum_assignment.cpp).
//
// One thread block per problem, every problem of the batch in one launch, no host sync.
// Each block runs the same shortest-augmenting-path algorithm as the host solver
// (ops/cpu/linear_sum_assignment_solver.h) in float64, so it makes scipy's choices: the threads
// share the scan of the remaining columns (the O(n) part of every step), and a block-wide arg-min
// picks the next column with the order-independent rule of ops/common/linear_sum_assignment.h,
// which selects exactly the column scipy's sequential scan would. The inherently sequential steps
// (take the column, flip the path) are done by thread 0 between barriers.
//
// The working arrays live in shared memory when they fit (max(R, C) up to 1002) and otherwise in
// a global-memory workspace (one slice per problem, allocated by the host wrapper), so any
// problem size runs; the cost is read in place through its strides and widened to float64
// on the fly (transposed indexing for tall problems, negated when maximizing). Errors come back in
// the status tensor; the kernel never asserts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "ops/common/linear_sum_assignment_checks.h"
#include "ops/common/linear_sum_assignment.h"
#include "ops/cuda/cuda_utils.cuh"

namespace detr_ops::lsa {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarpSize;
constexpr double kInf = std::numeric_limits<double>::infinity();

// A column competing in the block arg-min: its path cost, its tie key (tie_key) and its position
// in `remaining`.
struct Candidate {
  double cost;
  long long key;
  int pos;
};

// Shuffles a whole candidate; cuda::warp_reduce finds this overload by argument-dependent lookup.
__device__ __forceinline__ Candidate shfl_xor(const Candidate& c, int lane_mask) {
  return Candidate{cuda::shfl_xor(c.cost, lane_mask), cuda::shfl_xor(c.key, lane_mask),
                   cuda::shfl_xor(c.pos, lane_mask)};
}

// The better of two candidates under `better`. Keys are distinct, so the block's winner does not
// depend on the order of the reduction.
struct BetterOf {
  __device__ __forceinline__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    return better(b.cost, b.key, a.cost, a.key) ? b : a;
  }
};

// Exact widening to float64: half and bfloat16 go through float (exact); double stays as is.
template <typename scalar_t>
__device__ __forceinline__ double widen(scalar_t x) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return x;
  } else {
    return static_cast<double>(static_cast<float>(x));
  }
}

// Per-problem views into the workspace; every array has room for max(R, C) entries.
struct Work {
  double *u, *v, *spc;
  int32_t *path, *col4row, *row4col, *remaining, *rows_seen, *cols_seen;
};

__device__ Work carve(double* d, int32_t* w, int64_t L) {
  return Work{d, d + L, d + 2 * L, w, w + L, w + 2 * L, w + 3 * L, w + 4 * L, w + 5 * L};
}

// Bytes of one problem's working arrays; when they fit in the 48 KB a block may use without
// opting in (less 1 KB for the kernel's static shared variables; DETR: L = 900 queries -> 43 KB),
// they live in shared memory, otherwise in the global workspace.
constexpr int64_t kBytesPerEntry = 3 * sizeof(double) + 6 * sizeof(int32_t);
constexpr int64_t kSharedLimit = 47 * 1024;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lsa_kernel(const scalar_t* __restrict__ cost, int64_t s0, int64_t s1, int64_t s2, int64_t R, int64_t C,
               const int64_t* __restrict__ num_rows, const int64_t* __restrict__ num_cols, bool maximize,
               double* wd, int32_t* wi, int64_t L, bool in_shared, int64_t* __restrict__ col_for_row,
               int32_t* __restrict__ status) {
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t rows = num_rows ? num_rows[b] : R, cols = num_cols ? num_cols[b] : C;
  if (rows < 0 || rows > R || cols < 0 || cols > C) {
    if (tid == 0) status[b] = kBadSize;
    return;
  }
  if (rows == 0 || cols == 0) return;

  // Working orientation: nr <= nc, element (i, j) = sign * cost[b, i, j] or its transpose.
  const bool transposed = cols < rows;
  const int nr = static_cast<int>(transposed ? cols : rows), nc = static_cast<int>(transposed ? rows : cols);
  const int64_t row_stride = transposed ? s2 : s1, col_stride = transposed ? s1 : s2;
  const scalar_t* base = cost + b * s0;
  const double sign = maximize ? -1.0 : 1.0;
  auto at = [&](int i, int j) { return sign * widen(base[i * row_stride + j * col_stride]); };

  // NaN and -inf (after the sign) make the problem invalid, before any solving (as scipy).
  int bad = 0;
  for (int64_t k = tid; k < int64_t(nr) * nc; k += kThreads) {
    const double x = at(static_cast<int>(k / nc), static_cast<int>(k % nc));
    bad |= (x != x) || (x == -kInf);
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) status[b] = kInvalid;
    return;
  }

  extern __shared__ double shared_work[];
  Work w = in_shared ? carve(shared_work, reinterpret_cast<int32_t*>(shared_work + 3 * L), L)
                     : carve(wd + b * 3 * L, wi + b * 6 * L, L);
  for (int j = tid; j < nc; j += kThreads) {
    w.v[j] = 0;
    w.row4col[j] = -1;
    w.path[j] = -1;
  }
  for (int i = tid; i < nr; i += kThreads) {
    w.u[i] = 0;
    w.col4row[i] = -1;
  }

  __shared__ Candidate warp_best[kWarps];
  __shared__ double s_min_val;
  __shared__ int s_row, s_sink, s_remaining, s_rows_seen, s_cols_seen, s_failed;
  if (tid == 0) s_failed = 0;
  __syncthreads();

  for (int cur = 0; cur < nr; ++cur) {
    for (int k = tid; k < nc; k += kThreads) {
      w.remaining[k] = nc - 1 - k;  // scanned from the last column down, as scipy
      w.spc[k] = kInf;
    }
    if (tid == 0) {
      s_min_val = 0;
      s_row = cur;
      s_sink = -1;
      s_remaining = nc;
      s_rows_seen = 1;
      s_cols_seen = 0;
      w.rows_seen[0] = cur;
    }
    __syncthreads();

    while (s_sink < 0) {
      const int i = s_row, num_remaining = s_remaining;
      const double min_val = s_min_val, ui = w.u[i];
      Candidate mine{kInf, -1, -1};
      for (int it = tid; it < num_remaining; it += kThreads) {
        const int j = w.remaining[it];
        const double r = min_val + at(i, j) - ui - w.v[j];
        double s = w.spc[j];
        if (r < s) {
          w.path[j] = i;
          w.spc[j] = r;
          s = r;
        }
        const long long key = tie_key(it, w.row4col[j] < 0, nc);
        if (better(s, key, mine.cost, mine.key)) mine = Candidate{s, key, it};
      }
      // Block arg-min under `better` (thread 0 gets the winner).
      const Candidate winner = cuda::block_reduce<kThreads>(mine, BetterOf{}, warp_best);
      if (tid == 0) {
        if (winner.cost == kInf || winner.pos < 0) {
          s_failed = 1;
          s_sink = nc;  // leaves the loop; the problem is reported infeasible
        } else {
          s_min_val = winner.cost;
          const int j = w.remaining[winner.pos];
          w.cols_seen[s_cols_seen++] = j;
          if (w.row4col[j] < 0) {
            s_sink = j;
          } else {
            s_row = w.row4col[j];
            w.rows_seen[s_rows_seen++] = s_row;
          }
          w.remaining[winner.pos] = w.remaining[--s_remaining];
        }
      }
      __syncthreads();
    }
    if (s_failed) break;

    // Dual update over the visited rows (cur takes min_val alone) and columns.
    const double min_val = s_min_val;
    for (int k = tid; k < s_rows_seen; k += kThreads) {
      const int r = w.rows_seen[k];
      w.u[r] += k == 0 ? min_val : min_val - w.spc[w.col4row[r]];
    }
    for (int k = tid; k < s_cols_seen; k += kThreads) {
      const int c = w.cols_seen[k];
      w.v[c] -= min_val - w.spc[c];
    }
    __syncthreads();
    if (tid == 0) {
      int j = s_sink;
      for (;;) {
        const int r = w.path[j];
        w.row4col[j] = r;
        const int previous = w.col4row[r];
        w.col4row[r] = j;
        j = previous;
        if (r == cur) break;
      }
    }
    __syncthreads();
  }

  if (s_failed) {
    if (tid == 0) status[b] = kInfeasible;
    return;
  }
  int64_t* out = col_for_row + b * R;
  for (int i = tid; i < nr; i += kThreads) {
    if (transposed) {
      out[w.col4row[i]] = i;
    } else {
      out[i] = w.col4row[i];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> batched_linear_sum_assignment_cuda(const at::Tensor& cost,
                                                                      const c10::optional<at::Tensor>& num_rows_in,
                                                                      const c10::optional<at::Tensor>& num_cols_in,
                                                                      bool maximize) {
  check_inputs(cost, num_rows_in, num_cols_in);
  const c10::cuda::CUDAGuard guard(cost.device());
  const int64_t B = cost.size(0), R = cost.size(1), C = cost.size(2);
  at::Tensor col_for_row = at::full({B, R}, -1, cost.options().dtype(at::kLong));
  at::Tensor status = at::zeros({B}, cost.options().dtype(at::kInt));
  if (B == 0) return {col_for_row, status};
  TORCH_CHECK_VALUE(std::max(R, C) < (int64_t(1) << 30), "cost: R and C must be below 2^30, got ", R, " and ", C);
  at::Tensor num_rows, num_cols;
  if (num_rows_in.has_value()) num_rows = num_rows_in->contiguous();
  if (num_cols_in.has_value()) num_cols = num_cols_in->contiguous();
  const int64_t L = std::max<int64_t>(1, std::max(R, C));
  const bool in_shared = L * kBytesPerEntry <= kSharedLimit;
  const int64_t global_entries = in_shared ? 0 : B * L;
  at::Tensor wd = at::empty({global_entries * 3}, cost.options().dtype(at::kDouble));
  at::Tensor wi = at::empty({global_entries * 6}, cost.options().dtype(at::kInt));
  const size_t shared_bytes = in_shared ? static_cast<size_t>(L * kBytesPerEntry) : 0;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "batched_linear_sum_assignment_cuda",
                                  [&] {
    lsa_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, shared_bytes, stream>>>(
        cost.const_data_ptr<scalar_t>(), cost.stride(0), cost.stride(1), cost.stride(2), R, C,
        num_rows.defined() ? num_rows.const_data_ptr<int64_t>() : nullptr,
        num_cols.defined() ? num_cols.const_data_ptr<int64_t>() : nullptr, maximize, wd.mutable_data_ptr<double>(),
        wi.mutable_data_ptr<int32_t>(), L, in_shared, col_for_row.mutable_data_ptr<int64_t>(),
        status.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {col_for_row, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("batched_linear_sum_assignment", &batched_linear_sum_assignment_cuda);
}

}  // namespace detr_ops::lsa
