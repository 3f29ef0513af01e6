// CUDA kernels of multi-scale deformable attention (schemas in ops/ms_deform_attn.cpp, sampling
// math in ops/common/ms_deform_attn.h).
//
// One warp per (batch n, query q, head m). The 2020 kernel gives every (channel, point) its own
// thread and so recomputes each sampling location's corners and weights once per channel; here
// the warp's lanes first compute the corners and weights of up to 32 points at once (one point per
// lane) into shared memory, then all lanes sweep those points, lane i owning channels i, i+32, ...
// so each corner read of D channels is one coalesced load.
//
// Backward: per point, each lane's partial dot products <grad_out, corner value> are reduced with
// warp shuffles (log2(32) steps, no serial loop in shared memory) into the gradients of the
// attention weight and location, which lane j of the warp keeps for point j of the tile and writes
// coalesced after the tile. grad_value is scattered with float/double atomicAdd into an
// accumulation-type buffer (rounded once at the end for half/bfloat16): fast, but not
// deterministic, so it raises under torch.use_deterministic_algorithms(True) (the Python autograd
// routes the backward to the deterministic Triton kernel then, when Triton is installed).
//
// The K points of each (n, q, m) are consecutive, level by level; PointTable says where each
// level's points start (P per level for ms_deform_attn, num_points_list for ms_deform_attn_points).
//
// Offsets are int64 (N*S*M*D passes 2^31 at detector sizes with large batches). half and bfloat16
// are read as is and accumulated in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/common/ms_deform_attn.h"
#include "ops/common/ms_deform_attn_checks.h"
#include "ops/cuda/cuda_utils.cuh"

namespace detr_ops::msda {
namespace {

constexpr int kWarp = cuda::kWarpSize;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarp * kWarpsPerBlock;

// Where each level's points start, passed by value in the kernel parameters (__grid_constant__:
// read in place, not copied per thread). A host list needs no device copy this way, which would
// either synchronise or, in a captured CUDA graph, read a host buffer that has since been reused.
constexpr int kMaxListLevels = 64;
struct PointTable {
  int64_t uniform;                     // P of every level (ms_deform_attn), or -1 (a list)
  int64_t begin[kMaxListLevels + 1];  // a list's L + 1 prefix sums
};

PointTable point_table(const Points& points, int64_t L) {
  PointTable t{};
  t.uniform = points.uniform;
  if (points.uniform < 0) {
    TORCH_CHECK_VALUE(L <= kMaxListLevels, "num_points_list: the CUDA kernels take at most ", kMaxListLevels,
                      " levels, got ", L);
    for (int64_t l = 0; l <= L; ++l) t.begin[l] = points.begin[l];
  }
  return t;
}

// The level of point k (0 <= k < K); a level with no points is never returned.
__device__ __forceinline__ int64_t level_of(const PointTable& t, int64_t L, int64_t k) {
  if (t.uniform >= 0) return k / t.uniform;  // K > 0, so P > 0
  int64_t l = 0;
  while (l + 1 < L && t.begin[l + 1] <= k) ++l;
  return l;
}

// Corner rows (element offset of channel 0 in value, or -1) and weights of one point.
template <typename acc_t>
struct PointTile {
  int64_t row[kWarpsPerBlock][kWarp][4];
  acc_t weight[kWarpsPerBlock][kWarp][4];
};

// Fills lane's slot of the tile with point k (of this warp's K points) of item (n, q, m).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Bilinear<acc_t> load_point(const Sizes& s, const PointTable& pts, const int64_t* shapes,
                                                      const int64_t* starts, const scalar_t* loc, int64_t point0,
                                                      int64_t k, int64_t n, int64_t m, int64_t row[4], int64_t& H,
                                                      int64_t& W) {
  const int64_t l = level_of(pts, s.L, k);
  H = shapes[2 * l];
  W = shapes[2 * l + 1];
  const int64_t start = starts[l];
  Bilinear<acc_t> b;
  if (level_in_bounds(start, H, W, s.S)) {
    b = bilinear<acc_t>(static_cast<acc_t>(loc[2 * (point0 + k)]), static_cast<acc_t>(loc[2 * (point0 + k) + 1]), H,
                        W);
  } else {
    b = bilinear<acc_t>(acc_t(-2), acc_t(-2), H, W);  // an off-map point: no corners, no gradient
  }
  for (int c = 0; c < 4; ++c) {
    row[c] = b.pixel[c] >= 0 ? ((n * s.S + start + b.pixel[c]) * s.M + m) * s.D : -1;
  }
  return b;
}

// Resources (docs/cuda_resources.md, sm_90): 38-78 registers, 4-6 blocks of 256 threads per SM. A
// few instantiations (forward R=4, backward R=1 and R=8, float/half/bfloat16) show 8-48 B of ptxas
// spills at 39-48 registers. They are not register pressure: the PTX has no local memory, and
// assembling it again with --maxrregcount 64 gives the same spills and register counts, so ptxas
// chose to keep a few values in L1-resident local memory. Accepted; to be
// measured against a variant without them when a GPU is available.

// R channels per lane per pass (D <= 32 * R in one pass; larger D loops over passes).
template <typename scalar_t, int R>
__global__ void __launch_bounds__(kThreads) forward_kernel(const scalar_t* __restrict__ value,
                                                           const int64_t* __restrict__ shapes,
                                                           const int64_t* __restrict__ starts,
                                                           const scalar_t* __restrict__ loc,
                                                           const scalar_t* __restrict__ attn, scalar_t* __restrict__ out,
                                                           Sizes s, const __grid_constant__ PointTable pts) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ PointTile<acc_t> tile;
  const int warp = cuda::warp_id(), lane = cuda::lane_id();
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;  // (n, q, m)
  if (item >= s.N * s.Lq * s.M) return;  // warp-uniform: only __syncwarp is used below
  const int64_t m = item % s.M, n = item / (s.M * s.Lq);
  const int64_t K = s.K, point0 = item * K;
  scalar_t* o = out + item * s.D;  // out [N, Lq, M*D] is [N*Lq*M, D]

  for (int64_t d0 = 0; d0 < s.D; d0 += kWarp * R) {
    acc_t acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = acc_t(0);
    for (int64_t t0 = 0; t0 < K; t0 += kWarp) {
      const int64_t k = t0 + lane;
      if (k < K) {
        int64_t row[4], H, W;
        const Bilinear<acc_t> b =
            load_point<scalar_t, acc_t>(s, pts, shapes, starts, loc, point0, k, n, m, row, H, W);
        const acc_t a = static_cast<acc_t>(attn[point0 + k]);
        for (int c = 0; c < 4; ++c) {
          tile.row[warp][lane][c] = row[c];
          tile.weight[warp][lane][c] = a * b.weight[c];
        }
      }
      __syncwarp();
      const int count = static_cast<int>(K - t0 < kWarp ? K - t0 : kWarp);
      for (int j = 0; j < count; ++j) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t row = tile.row[warp][j][c];
          if (row < 0) continue;
          const acc_t w = tile.weight[warp][j][c];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int64_t d = d0 + lane + kWarp * r;
            if (d < s.D) acc[r] += w * static_cast<acc_t>(value[row + d]);
          }
        }
      }
      __syncwarp();  // the tile is rewritten by the next iteration
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t d = d0 + lane + kWarp * r;
      if (d < s.D) o[d] = static_cast<scalar_t>(acc[r]);
    }
  }
}

template <typename scalar_t, int R>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
    const int64_t* __restrict__ starts, const scalar_t* __restrict__ loc, const scalar_t* __restrict__ attn,
    at::opmath_type<scalar_t>* __restrict__ grad_value, scalar_t* __restrict__ grad_loc,
    scalar_t* __restrict__ grad_attn, Sizes s, const __grid_constant__ PointTable pts) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ PointTile<acc_t> tile;         // weight holds the bare bilinear weight here
  __shared__ acc_t frac[kWarpsPerBlock][kWarp][3];  // attention weight, lx, ly of each point
  const int warp = cuda::warp_id(), lane = cuda::lane_id();
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (item >= s.N * s.Lq * s.M) return;  // warp-uniform
  const int64_t m = item % s.M, n = item / (s.M * s.Lq);
  const int64_t K = s.K, point0 = item * K;
  const scalar_t* g = grad_out + item * s.D;

  for (int64_t t0 = 0; t0 < K; t0 += kWarp) {
    const int64_t k = t0 + lane;
    int64_t H = 0, W = 0;
    if (k < K) {
      int64_t row[4];
      const Bilinear<acc_t> b = load_point<scalar_t, acc_t>(s, pts, shapes, starts, loc, point0, k, n, m, row, H, W);
      for (int c = 0; c < 4; ++c) {
        tile.row[warp][lane][c] = row[c];
        tile.weight[warp][lane][c] = b.weight[c];
      }
      frac[warp][lane][0] = static_cast<acc_t>(attn[point0 + k]);
      frac[warp][lane][1] = b.lx;
      frac[warp][lane][2] = b.ly;
    }
    __syncwarp();
    const int count = static_cast<int>(K - t0 < kWarp ? K - t0 : kWarp);
    // Lane j ends with the gradients of point t0 + j.
    acc_t my_attn = acc_t(0), my_gx = acc_t(0), my_gy = acc_t(0);
    for (int64_t d0 = 0; d0 < s.D; d0 += kWarp * R) {
      acc_t gr[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t d = d0 + lane + kWarp * r;
        gr[r] = d < s.D ? static_cast<acc_t>(g[d]) : acc_t(0);
      }
      for (int j = 0; j < count; ++j) {
        const acc_t a = frac[warp][j][0], lx = frac[warp][j][1], ly = frac[warp][j][2];
        acc_t dot[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          dot[c] = acc_t(0);
          const int64_t row = tile.row[warp][j][c];
          if (row < 0) continue;
          const acc_t w = a * tile.weight[warp][j][c];
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int64_t d = d0 + lane + kWarp * r;
            if (d < s.D) {
              dot[c] += gr[r] * static_cast<acc_t>(value[row + d]);
              atomicAdd(grad_value + row + d, w * gr[r]);
            }
          }
        }
        // The three per-point gradients are linear in the dots: each lane applies them to its partial
        // dots (pixel_grad for the location), then each is reduced once.
        const acc_t* wt = tile.weight[warp][j];
        acc_t px, py;
        pixel_grad(lx, ly, dot[0], dot[1], dot[2], dot[3], px, py);
        const acc_t pa = cuda::warp_sum(wt[0] * dot[0] + wt[1] * dot[1] + wt[2] * dot[2] + wt[3] * dot[3]);
        px = cuda::warp_sum(px);
        py = cuda::warp_sum(py);
        if (lane == j) {
          my_attn += pa;
          my_gx += a * px;
          my_gy += a * py;
        }
      }
    }
    if (k < K) {
      grad_attn[point0 + k] = static_cast<scalar_t>(my_attn);
      grad_loc[2 * (point0 + k)] = static_cast<scalar_t>(my_gx * static_cast<acc_t>(W));
      grad_loc[2 * (point0 + k) + 1] = static_cast<scalar_t>(my_gy * static_cast<acc_t>(H));
    }
    __syncwarp();
  }
}

// Smallest channels-per-lane R in {1, 2, 4, 8} with 32 * R >= D (8 for larger D, in passes).
template <typename F>
void with_channels_per_lane(int64_t D, F&& f) {
  if (D <= kWarp) {
    f(std::integral_constant<int, 1>{});
  } else if (D <= 2 * kWarp) {
    f(std::integral_constant<int, 2>{});
  } else if (D <= 4 * kWarp) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

// One warp per (n, q, m).
unsigned int item_blocks(const Sizes& s) { return cuda::blocks_for(s.N * s.Lq * s.M, kWarpsPerBlock); }

at::Tensor forward(const Sizes& s, const Points& points, const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  const PointTable pts = point_table(points, s.L);
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor out = at::zeros({s.N, s.Lq, s.M * s.D}, value.options());
  if (out.numel() == 0) return out;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_cuda", [&] {
    with_channels_per_lane(s.D, [&](auto r) {
      forward_kernel<scalar_t, decltype(r)::value><<<item_blocks(s), kThreads, 0, stream>>>(
          v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
          loc.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s,
          pts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const Sizes& s, const Points& points,
                                                        const at::Tensor& grad_output, const at::Tensor& value,
                                                        const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights) {
  check_grad_output(grad_output, s, value);
  const PointTable pts = point_table(points, s.L);
  at::globalContext().alertNotDeterministic("detr_ops::ms_deform_attn_backward (CUDA atomicAdd on grad_value)");
  const c10::cuda::CUDAGuard guard(value.device());
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_attn = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (s.N * s.Lq * s.M == 0 || s.K == 0 || s.D == 0) return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const at::Tensor g = grad_output.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_channels_per_lane(s.D, [&](auto r) {
      backward_kernel<scalar_t, decltype(r)::value><<<item_blocks(s), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(),
          starts.const_data_ptr<int64_t>(), loc.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(),
          grad_value.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<scalar_t>(),
          grad_attn.mutable_data_ptr<scalar_t>(), s, pts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  using Checked = Entries<forward, backward>;
  m.impl("ms_deform_attn", &Checked::ms_deform_attn);
  m.impl("ms_deform_attn_backward", &Checked::ms_deform_attn_backward);
  m.impl("ms_deform_attn_points", &Checked::ms_deform_attn_points);
  m.impl("ms_deform_attn_points_backward", &Checked::ms_deform_attn_points_backward);
}

}  // namespace detr_ops::msda
