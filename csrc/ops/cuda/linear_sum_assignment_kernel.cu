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
// problem size runs. The cost is widened to float64 on the fly and negated when maximizing. A wide
// problem is read in place through its strides (a step reads one row: consecutive threads read
// consecutive columns). A tall one is solved transposed, and reading a row of the transpose in
// place would gather with stride C (DETR's [queries, targets] cost: stride T); so the block first
// transposes its problem once, through a shared-memory tile, into a contiguous workspace slice.
//
// Capacity k is solved on the virtual problem whose columns are the cost's tiled k times (copy c of
// column j is column c*C + j): working element (i, j) reads physical row i mod rp and column
// j mod cp, with k first reduced exactly by effective_copies (ops/common/linear_sum_assignment.h).
//
// Errors come back in the status tensor; the kernel never asserts.
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
// The transposing tile: kTile x (kTile + 1) elements (the extra column avoids bank conflicts).
constexpr int kTile = 32;

// dst[c * rows + r] = src[r * s_row + c * s_col] for r < rows, c < cols: reads along c and writes
// along r are both coalesced when s_col == 1. tile: kTile * (kTile + 1) elements of shared memory.
template <typename scalar_t>
__device__ void transpose_block(const scalar_t* __restrict__ src, int64_t s_row, int64_t s_col, int rows, int cols,
                                scalar_t* __restrict__ dst, scalar_t* tile) {
  const int lane = cuda::lane_id(), warp = cuda::warp_id();
  for (int r0 = 0; r0 < rows; r0 += kTile) {
    for (int c0 = 0; c0 < cols; c0 += kTile) {
      for (int rr = warp; rr < kTile; rr += kWarps) {
        const int r = r0 + rr, c = c0 + lane;
        if (r < rows && c < cols) tile[rr * (kTile + 1) + lane] = src[int64_t(r) * s_row + int64_t(c) * s_col];
      }
      __syncthreads();
      for (int cc = warp; cc < kTile; cc += kWarps) {
        const int r = r0 + lane, c = c0 + cc;
        if (r < rows && c < cols) dst[int64_t(c) * rows + r] = tile[lane * (kTile + 1) + cc];
      }
      __syncthreads();
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    lsa_kernel(const scalar_t* __restrict__ cost, int64_t s0, int64_t s1, int64_t s2, int64_t R, int64_t C,
               const int64_t* __restrict__ num_rows, const int64_t* __restrict__ num_cols, bool maximize,
               int64_t capacity, const int64_t* __restrict__ capacities, double* wd, int32_t* wi, int64_t L,
               bool in_shared, scalar_t* tbuf, int64_t tbuf_stride, int64_t* __restrict__ col_for_row,
               int32_t* __restrict__ status) {
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t rows = num_rows ? num_rows[b] : R, cols = num_cols ? num_cols[b] : C;
  const int64_t k = capacities ? capacities[b] : capacity;
  if (rows < 0 || rows > R || cols < 0 || cols > C || k < 0) {
    if (tid == 0) status[b] = kBadSize;
    return;
  }
  const int64_t copies = effective_copies(k, rows, cols);  // 0 for an empty problem
  if (capacities && copies > capacity) {  // the workspace was sized for at most `capacity` copies
    if (tid == 0) status[b] = kBadSize;
    return;
  }
  if (copies == 0) return;

  // Working (virtual) orientation: nr <= nc; physical rp x cp. The host checked that L (>= nr, nc)
  // is below 2^30, so int indices hold.
  const bool transposed = copies * cols < rows;
  const int nr = static_cast<int>(transposed ? copies * cols : rows);
  const int nc = static_cast<int>(transposed ? rows : copies * cols);
  const int rp = static_cast<int>(transposed ? cols : rows), cp = static_cast<int>(transposed ? rows : cols);
  const scalar_t* base = cost + b * s0;
  extern __shared__ double shared_work[];
  int64_t row_stride = transposed ? s2 : s1, col_stride = transposed ? s1 : s2;
  if (transposed && tbuf != nullptr) {
    scalar_t* block = tbuf + b * tbuf_stride;
    transpose_block(base, s1, s2, static_cast<int>(rows), static_cast<int>(cols), block,
                    reinterpret_cast<scalar_t*>(shared_work));
    base = block;
    row_stride = rows;
    col_stride = 1;
  }
  const double sign = maximize ? -1.0 : 1.0;
  // Working element (i, j): physical row i mod rp, column j mod cp (copies of a column or a row).
  auto at = [&](int i, int j) {
    const int pi = i < rp ? i : i % rp, pj = j < cp ? j : j % cp;
    return sign * widen(base[int64_t(pi) * row_stride + int64_t(pj) * col_stride]);
  };

  // NaN and -inf (after the sign) in the physical block make the problem invalid, before any
  // solving (as scipy).
  int bad = 0;
  for (int64_t e = tid; e < int64_t(rp) * cp; e += kThreads) {
    const double x = at(static_cast<int>(e / cp), static_cast<int>(e % cp));
    bad |= (x != x) || (x == -kInf);
  }
  if (__syncthreads_or(bad)) {
    if (tid == 0) status[b] = kInvalid;
    return;
  }

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
  // A virtual column t (a virtual row, transposed) is the original column t mod cols.
  int64_t* out = col_for_row + b * R;
  for (int i = tid; i < nr; i += kThreads) {
    if (transposed) {
      out[w.col4row[i]] = i < rp ? i : i % rp;
    } else {
      const int j = w.col4row[i];
      out[i] = j < cp ? j : j % cp;
    }
  }
}

// a * b * c elements of workspace, or a clear error when that product overflows int64.
int64_t workspace_elements(int64_t a, int64_t b, int64_t c, int64_t R, int64_t C) {
  int64_t ab = 0, abc = 0;
  TORCH_CHECK_WITH(OutOfMemoryError, !__builtin_mul_overflow(a, b, &ab) && !__builtin_mul_overflow(ab, c, &abc),
                   "batched_linear_sum_assignment: the workspace of ", a, " problems of ", R, " x ", C,
                   " overflows int64 elements");
  return abc;
}

std::tuple<at::Tensor, at::Tensor> batched_linear_sum_assignment_cuda(const at::Tensor& cost,
                                                                      const c10::optional<at::Tensor>& num_rows_in,
                                                                      const c10::optional<at::Tensor>& num_cols_in,
                                                                      bool maximize, int64_t capacity,
                                                                      const c10::optional<at::Tensor>& capacities_in) {
  check_inputs(cost, num_rows_in, num_cols_in, capacity, capacities_in);
  const c10::cuda::CUDAGuard guard(cost.device());
  const int64_t B = cost.size(0), R = cost.size(1), C = cost.size(2);
  at::Tensor col_for_row = at::full({B, R}, -1, cost.options().dtype(at::kLong));
  at::Tensor status = at::zeros({B}, cost.options().dtype(at::kInt));
  if (B == 0) return {col_for_row, status};
  // One block per problem on grid.x (up to 2^31 - 1; y and z would stop at 65535).
  TORCH_CHECK_VALUE(B <= std::numeric_limits<int32_t>::max(), "cost: a batch of ", B,
                    " problems exceeds the 2^31 - 1 blocks of one launch");
  const int64_t L = std::max<int64_t>(1, max_virtual_columns(R, C, capacity));
  TORCH_CHECK_VALUE(L < (int64_t(1) << 30), "cost: R, C and capacity * C must be below 2^30, got R = ", R, ", C = ", C,
                    ", capacity = ", capacity);
  at::Tensor num_rows, num_cols, capacities;
  if (num_rows_in.has_value()) num_rows = num_rows_in->contiguous();
  if (num_cols_in.has_value()) num_cols = num_cols_in->contiguous();
  if (capacities_in.has_value()) capacities = capacities_in->contiguous();
  const bool in_shared = L * kBytesPerEntry <= kSharedLimit;
  at::Tensor wd = at::empty({in_shared ? 0 : workspace_elements(B, L, 3, R, C)}, cost.options().dtype(at::kDouble));
  at::Tensor wi = at::empty({in_shared ? 0 : workspace_elements(B, L, 6, R, C)}, cost.options().dtype(at::kInt));
  // A problem is solved transposed when its tiled width is below its rows. Without per-problem
  // sizes that is known here; with them any problem might be, and each slice holds the largest
  // transposed block: cols < rows <= R, so R * min(C, R) elements.
  const bool sized = num_rows.defined() || num_cols.defined() || capacities.defined();
  const bool may_transpose = sized ? R > 1 : effective_copies(capacity, R, C) * C < R;
  const int64_t tbuf_stride = may_transpose ? R * std::min(R, C) : 0;
  at::Tensor tbuf = at::empty({workspace_elements(B, tbuf_stride, 1, R, C)}, cost.options());
  const int64_t tile_bytes = may_transpose ? int64_t(kTile) * (kTile + 1) * static_cast<int64_t>(cost.element_size()) : 0;
  const size_t shared_bytes = static_cast<size_t>(std::max(in_shared ? L * kBytesPerEntry : 0, tile_bytes));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "batched_linear_sum_assignment_cuda",
                                  [&] {
    lsa_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, shared_bytes, stream>>>(
        cost.const_data_ptr<scalar_t>(), cost.stride(0), cost.stride(1), cost.stride(2), R, C,
        num_rows.defined() ? num_rows.const_data_ptr<int64_t>() : nullptr,
        num_cols.defined() ? num_cols.const_data_ptr<int64_t>() : nullptr, maximize, capacity,
        capacities.defined() ? capacities.const_data_ptr<int64_t>() : nullptr, wd.mutable_data_ptr<double>(),
        wi.mutable_data_ptr<int32_t>(), L, in_shared, may_transpose ? tbuf.mutable_data_ptr<scalar_t>() : nullptr,
        tbuf_stride, col_for_row.mutable_data_ptr<int64_t>(), status.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {col_for_row, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("batched_linear_sum_assignment", &batched_linear_sum_assignment_cuda);
}

}  // namespace detr_ops::lsa
