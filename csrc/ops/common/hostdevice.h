// DETR_HD marks the small math functions in csrc/ops/common that both the CPU kernels (g++) and the
// CUDA kernels (nvcc) include, so each formula is written once.
#pragma once

#if defined(__CUDACC__)
#define DETR_HD __host__ __device__ __forceinline__
#else
#define DETR_HD inline
#endif
