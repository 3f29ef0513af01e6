// Small pieces every CUDA kernel file of detr_ops uses: warp constants, warp and block reductions,
// and launch-size arithmetic. Only c10/cuda and CUDA headers: ATen/cuda/CUDAContext.h pulls in
// cuSPARSE/cuBLAS headers that a bare toolkit may lack.
//
// Reductions are butterflies (__shfl_xor_sync), so every lane ends with the result; for lane 0 the
// order of the additions is the same as a __shfl_down_sync tree's (lane 0 adds lane `offset` at
// each step in both), so a switch between the two does not change a bit of lane 0's result.
// Their order is fixed by the lane layout, hence deterministic from run to run.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace detr_ops::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x) % kWarpSize; }
__device__ __forceinline__ int warp_id() { return static_cast<int>(threadIdx.x) / kWarpSize; }

// __shfl_xor_sync for the arithmetic types CUDA shuffles natively. A reduction over a struct
// declares its own shfl_xor(Struct, int) next to the struct; warp_reduce finds it by
// argument-dependent lookup.
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, int lane_mask) {
  return __shfl_xor_sync(kFullMask, v, lane_mask);
}

// op(a, b) over the 32 lanes of a full warp; every lane gets the result. op must be associative
// and commutative up to the rounding the caller accepts.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = op(v, shfl_xor(v, offset));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce(v, [](T a, T b) { return a + b; });
}

// max as the kernels had it (a NaN operand is dropped in favour of the other, as fmax does).
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  return warp_reduce(v, [](T a, T b) { return max(a, b); });
}

// op over a block of kBlockThreads threads (a multiple of 32); the result is valid in thread 0
// only. warp_results: kBlockThreads / 32 slots in shared memory. Thread 0 combines the warps'
// results in warp order. Starts and ends with no barrier of its own beyond the one that publishes
// the warps' results: callers __syncthreads() before they reuse warp_results.
template <int kBlockThreads, typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* warp_results) {
  static_assert(kBlockThreads % kWarpSize == 0, "block_reduce needs whole warps");
  constexpr int kWarps = kBlockThreads / kWarpSize;
  v = warp_reduce(v, op);
  if (lane_id() == 0) warp_results[warp_id()] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 1; w < kWarps; ++w) v = op(v, warp_results[w]);
  }
  return v;
}

// Blocks of a 1-D grid with one block per `per_block` work items: ceil(n / per_block). An error
// instead of a silently truncated grid when that passes CUDA's grid.x limit (2^31 - 1).
inline unsigned int blocks_for(int64_t n, int64_t per_block) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "detr_ops: ", n,
              " work items need more CUDA blocks than a grid holds (", blocks, ")");
  return static_cast<unsigned int>(blocks);
}

// Blocks of a 1-D grid-stride loop over n items, `threads` per block: ceil(n / threads), capped
// where more blocks would not add occupancy (the loop covers the rest).
inline unsigned int grid_stride_blocks(int64_t n, int threads) {
  constexpr int64_t kMaxBlocks = int64_t{65535} * 32;
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace detr_ops::cuda
