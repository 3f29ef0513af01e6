// DETR_HD marks the small math functions in csrc/ops/common that both the CPU kernels (g++) and the
// CUDA kernels (nvcc) include, so each formula is written once.
#pragma once

#if defined(__CUDACC__)
#define DETR_HD __host__ __device__ __forceinline__
#else
// always_inline: inside the large functions AT_DISPATCH generates, g++ otherwise outlines these
// helpers, and a call per box pair stops the pair loops from vectorising (10x slower, measured).
#define DETR_HD inline __attribute__((always_inline))
#endif
