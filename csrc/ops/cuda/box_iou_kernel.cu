// CUDA kernels of detr_ops::pairwise_iou and its backward (schemas in ops/box_iou.cpp, math in
// ops/common/box_iou.h; the elementwise loss is in giou_loss_kernel.cu).
//
// Pairwise forward is bound by writing the [B,N,M] output: threads run along M (coalesced stores),
// each keeps its boxes2 box in registers and walks kRows rows, whose boxes1 box is a broadcast load.
// Backward: grad of boxes1 reduces along a row -> one warp per row, shuffle reduction. Grad of boxes2
// reduces down a column -> threads along M walk a fixed chunk of rows each and write a partial sum;
// a second kernel adds the chunks in order. No atomics, so the result is deterministic.
//
// Grid limits: every grid dimension that can exceed its limit is a grid-stride loop (y and z hold
// at most 65535 blocks, x at most 2^31 - 1), so no size leaves part of an output unwritten and no
// batch size is refused; all index arithmetic is int64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/common/box_iou_checks.h"
#include "ops/common/box_iou.h"
#include "ops/cuda/cuda_utils.cuh"

namespace detr_ops::box {
namespace {

constexpr int kThreads = 128;    // threads along M in the pairwise kernels
constexpr int kRows = 8;         // rows per thread in the pairwise forward
constexpr int kWarpsPerBlock = 8;

// Blocks on a grid dimension limited to 65535 (y, z); a grid-stride loop covers the rest.
inline unsigned int capped_blocks(int64_t n) { return static_cast<unsigned int>(std::min<int64_t>(n, 65535)); }

// grid: x over ceil(M / kThreads), y over row groups of kRows, z over B (y and z grid-stride).
template <typename scalar_t>
__global__ void pairwise_iou_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                    scalar_t* __restrict__ out, int64_t B, int64_t N, int64_t M, bool cxcywh,
                                    bool generalized) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= M) return;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const Box<acc_t> bj = load_box(boxes2 + (b * M + j) * 4, cxcywh);
    for (int64_t i0 = static_cast<int64_t>(blockIdx.y) * kRows; i0 < N;
         i0 += static_cast<int64_t>(gridDim.y) * kRows) {
      const int64_t i1 = i0 + kRows < N ? i0 + kRows : N;
      for (int64_t i = i0; i < i1; ++i) {
        const Box<acc_t> ai = load_box(boxes1 + (b * N + i) * 4, cxcywh);
        out[(b * N + i) * M + j] = static_cast<scalar_t>(iou_value<acc_t>(ai, bj, acc_t(0), generalized));
      }
    }
  }
}

// One warp per row (b, i), grid-stride over the B*N rows: grad of boxes1[b, i].
template <typename scalar_t>
__global__ void pairwise_grad1_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ boxes1,
                                      const scalar_t* __restrict__ boxes2, scalar_t* __restrict__ grad1, int64_t B,
                                      int64_t N, int64_t M, bool cxcywh, bool generalized) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = cuda::lane_id();
  // the whole warp takes the same rows, so the shuffles below see every lane
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + cuda::warp_id(); row < B * N;
       row += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const int64_t b = row / N;
    const Box<acc_t> a = load_box(boxes1 + row * 4, cxcywh);
    Box<acc_t> ga{0, 0, 0, 0};
    for (int64_t j = lane; j < M; j += cuda::kWarpSize) {
      Box<acc_t> unused{0, 0, 0, 0};
      iou_grad<acc_t>(a, load_box(boxes2 + (b * M + j) * 4, cxcywh), acc_t(0), generalized,
                      static_cast<acc_t>(grad[row * M + j]), ga, unused);
    }
    ga.x0 = cuda::warp_sum(ga.x0);
    ga.y0 = cuda::warp_sum(ga.y0);
    ga.x1 = cuda::warp_sum(ga.x1);
    ga.y1 = cuda::warp_sum(ga.y1);
    if (lane == 0) store_box(grad1 + row * 4, corner_grad_to_format(ga, cxcywh));
  }
}

// grid: x over ceil(M / kThreads), y over the row chunks, z over B (y and z grid-stride).
// partial: [chunks, B, M, 4] in acc_t.
template <typename scalar_t>
__global__ void pairwise_grad2_partial_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ boxes1,
                                              const scalar_t* __restrict__ boxes2,
                                              at::opmath_type<scalar_t>* __restrict__ partial, int64_t B, int64_t N,
                                              int64_t M, int64_t chunks, int64_t rows_per_chunk, bool cxcywh,
                                              bool generalized) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= M) return;
  for (int64_t b = blockIdx.z; b < B; b += gridDim.z) {
    const Box<acc_t> bj = load_box(boxes2 + (b * M + j) * 4, cxcywh);
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      const int64_t i0 = chunk * rows_per_chunk;
      const int64_t i1 = i0 + rows_per_chunk < N ? i0 + rows_per_chunk : N;
      Box<acc_t> gb{0, 0, 0, 0};
      for (int64_t i = i0; i < i1; ++i) {
        Box<acc_t> unused{0, 0, 0, 0};
        iou_grad<acc_t>(load_box(boxes1 + (b * N + i) * 4, cxcywh), bj, acc_t(0), generalized,
                        static_cast<acc_t>(grad[(b * N + i) * M + j]), unused, gb);
      }
      acc_t* p = partial + ((chunk * B + b) * M + j) * 4;
      p[0] = gb.x0;
      p[1] = gb.y0;
      p[2] = gb.x1;
      p[3] = gb.y1;
    }
  }
}

// Grid-stride over the B*M columns: launched with cuda::grid_stride_blocks, whose grid is capped
// (65535 * 32 blocks of 256 threads, about 5.4e8 columns), so without the loop the tail of grad2
// past that stayed 0.
template <typename scalar_t>
__global__ void pairwise_grad2_reduce_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                             scalar_t* __restrict__ grad2, int64_t BM, int64_t chunks, bool cxcywh) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < BM;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Box<acc_t> s{0, 0, 0, 0};
    for (int64_t c = 0; c < chunks; ++c) {
      const acc_t* p = partial + (c * BM + r) * 4;
      s.x0 += p[0];
      s.y0 += p[1];
      s.x1 += p[2];
      s.y1 += p[3];
    }
    store_box(grad2 + r * 4, corner_grad_to_format(s, cxcywh));
  }
}

at::Tensor pairwise_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format,
                             bool generalized) {
  const PairwiseArgs args = prepare_pairwise(boxes1, boxes2, box_format);
  if (args.empty()) return args.result();
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const int64_t B = args.B, N = args.N, M = args.M;
  const dim3 grid(cuda::blocks_for(M, kThreads), capped_blocks((N + kRows - 1) / kRows), capped_blocks(B));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "pairwise_iou_cuda", [&] {
    pairwise_iou_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        args.boxes1.const_data_ptr<scalar_t>(), args.boxes2.const_data_ptr<scalar_t>(),
        args.out.mutable_data_ptr<scalar_t>(), B, N, M, args.cxcywh, generalized);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.result();
}

std::tuple<at::Tensor, at::Tensor> pairwise_iou_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                              const at::Tensor& boxes2, c10::string_view box_format,
                                                              bool generalized) {
  const PairwiseArgs args = prepare_pairwise_backward(grad, boxes1, boxes2, box_format);
  if (args.empty()) return args.grads();
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const int64_t B = args.B, N = args.N, M = args.M;
  const bool cxcywh = args.cxcywh;
  const at::Tensor &b1 = args.boxes1, &b2 = args.boxes2, &g = args.grad;
  // Enough (column, chunk) threads to fill a large GPU (~2^18), at least 32 rows per chunk; the
  // chunking depends on the shape only, so the summation order is fixed.
  const int64_t max_chunks = std::min<int64_t>((N + 31) / 32, 65535);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(max_chunks, (int64_t{1} << 18) / (B * M)));
  const int64_t rows_per_chunk = (N + chunks - 1) / chunks;
  const int64_t used_chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  at::Tensor partial = at::empty({used_chunks, B, M, 4}, b1.options().dtype(at::toOpMathType(b1.scalar_type())));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "pairwise_iou_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pairwise_grad1_kernel<scalar_t><<<cuda::grid_stride_blocks(B * N, kWarpsPerBlock),
                                      kWarpsPerBlock * cuda::kWarpSize, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(),
        args.grad1.mutable_data_ptr<scalar_t>(), B, N, M, cxcywh, generalized);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(cuda::blocks_for(M, kThreads), capped_blocks(used_chunks), capped_blocks(B));
    pairwise_grad2_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<acc_t>(), B, N, M, used_chunks, rows_per_chunk, cxcywh, generalized);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pairwise_grad2_reduce_kernel<scalar_t><<<cuda::grid_stride_blocks(B * M, 256), 256, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), args.grad2.mutable_data_ptr<scalar_t>(), B * M, used_chunks, cxcywh);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.grads();
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("pairwise_iou", &pairwise_iou_cuda);
  m.impl("pairwise_iou_backward", &pairwise_iou_backward_cuda);
}

}  // namespace detr_ops::box

