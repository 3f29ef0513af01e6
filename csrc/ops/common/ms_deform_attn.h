// Bilinear sampling of one multi-scale deformable attention point, shared by the CPU and CUDA
// kernels so that the corner and weight rules are written once.
//
// The rule is the one of Deformable DETR's 2020 CUDA kernel (ms_deform_im2col_cuda.cuh), which
// MSDeformAttnFunction replaces: on one level of size H x W a normalised location (x, y) maps to
// the pixel coordinate (x * W - 0.5, y * H - 0.5); the point is sampled only when
// -1 < x_pix < W and -1 < y_pix < H (strict on both sides); its four surrounding pixels are the
// floor corners and floor + 1, weighted bilinearly, and a corner off the map contributes zero
// (value and gradient). The location gradient is the derivative of the bilinear weights on that
// cell [floor, floor + 1], so at an integer coordinate it is the right-hand derivative.
//
// This is F.grid_sample(bilinear, zeros, align_corners=False) away from two kinds of kink:
// grid_sample rounds its own expression of the pixel coordinate ((2x - 1 + 1) * W - 1) / 2, so a
// location that is an integer pixel coordinate in one rounding can fall just below it in the
// other (different one-sided derivatives); and at x_pix = -1 exactly (or y) the 2020 kernel skips
// the point (gradient 0) where a >= -1 test would give the right-hand derivative of the (zero)
// output. docs/ms_deform_attn.md has the details.
//
// NaN and +-inf fail the range comparisons, so such a point is rejected before its coordinate is
// converted to an integer (undefined for them).
//
// T is the accumulation type: float for half/bfloat16/float inputs, double for double.
#pragma once

#include <cmath>
#include <cstdint>

#include "ops/common/hostdevice.h"

namespace detr_ops::msda {

DETR_HD float floor_(float v) { return floorf(v); }
DETR_HD double floor_(double v) { return ::floor(v); }

// Corners in the order (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1).
template <typename T>
struct Bilinear {
  int64_t pixel[4];  // y * W + x within the level, or -1 for a corner off the map
  T weight[4];       // bilinear weight of each corner (0 for a corner off the map)
  T lx, ly;          // fractional position inside the cell; hx = 1 - lx, hy = 1 - ly
  bool any;          // false: the point contributes nothing and receives no gradient
};

// Whether a pixel coordinate is sampled at all on an axis of `size` pixels (strict, as the 2020
// kernel: a point at exactly -1 has no corner with a non-zero weight, and gets no gradient).
template <typename T>
DETR_HD bool sampled(T pix, int64_t size) {
  return pix > T(-1) && pix < static_cast<T>(size);
}

// a * b rounded, never fused with a following addition into one FMA. The pixel coordinate is
// loc * W rounded, then - 0.5 rounded, as the 2020 kernel writes it (in float it cannot contract:
// its 0.5 is a double); at a kink one rounding more or less decides on which side of an integer the
// coordinate falls (loc = 0.8333333333333333 on W = 3: 2.0 rounded twice, 1.9999999999999998 fused).
// nvcc contracts a * b - c by default, and so does g++ for C++ even in ISO mode (its ISO-mode
// -ffp-contract=off is for C only) wherever FMA is available, as in the x86-64-v3 clones of the CPU
// kernels. On the host an empty asm statement makes the product opaque: the compiler must
// materialise it, rounded, before the subtraction. Elsewhere a volatile round trip does the same.
#if defined(__GNUC__) && defined(__x86_64__)
#define DETR_MSDA_ROUNDED(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define DETR_MSDA_ROUNDED(v) __asm__("" : "+w"(v))
#else
#define DETR_MSDA_ROUNDED(v) \
  do {                        \
    volatile auto rounded_ = (v); \
    (v) = rounded_;           \
  } while (0)
#endif
DETR_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  float p = a * b;
  DETR_MSDA_ROUNDED(p);
  return p;
#endif
}
DETR_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  double p = a * b;
  DETR_MSDA_ROUNDED(p);
  return p;
#endif
}

// Callers pass a level that passed level_in_bounds, so every y * W + x below is at most H * W <= S.
template <typename T>
DETR_HD Bilinear<T> bilinear(T loc_x, T loc_y, int64_t H, int64_t W) {
  Bilinear<T> b;
  const T x = mul_rn(loc_x, static_cast<T>(W)) - T(0.5);
  const T y = mul_rn(loc_y, static_cast<T>(H)) - T(0.5);
  b.any = sampled(x, W) && sampled(y, H);
  if (!b.any) {
    for (int c = 0; c < 4; ++c) {
      b.pixel[c] = -1;
      b.weight[c] = T(0);
    }
    b.lx = b.ly = T(0);
    return b;
  }
  const T fx = floor_(x), fy = floor_(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  b.lx = x - fx;
  b.ly = y - fy;
  const T hx = T(1) - b.lx, hy = T(1) - b.ly;
  const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < W, in_y0 = y0 >= 0, in_y1 = y0 + 1 < H;
  b.pixel[0] = (in_x0 && in_y0) ? y0 * W + x0 : -1;
  b.pixel[1] = (in_x1 && in_y0) ? y0 * W + x0 + 1 : -1;
  b.pixel[2] = (in_x0 && in_y1) ? (y0 + 1) * W + x0 : -1;
  b.pixel[3] = (in_x1 && in_y1) ? (y0 + 1) * W + x0 + 1 : -1;
  b.weight[0] = b.pixel[0] >= 0 ? hx * hy : T(0);
  b.weight[1] = b.pixel[1] >= 0 ? b.lx * hy : T(0);
  b.weight[2] = b.pixel[2] >= 0 ? hx * b.ly : T(0);
  b.weight[3] = b.pixel[3] >= 0 ? b.lx * b.ly : T(0);
  return b;
}

// Derivative of the sampled value w.r.t. the pixel coordinate, given the point's fractional
// position (lx, ly) inside its cell and dot_c = <grad, value at corner c> (0 for corners off the
// map). The normalised-location gradient is this times W (x) and H (y), times the attention
// weight. Linear in the dots, so a caller holding partial dots (a CUDA lane's channels) may apply it
// to the partials and sum the results.
template <typename T>
DETR_HD void pixel_grad(T lx, T ly, T dot0, T dot1, T dot2, T dot3, T& gx, T& gy) {
  const T hx = T(1) - lx, hy = T(1) - ly;
  gx = hy * (dot1 - dot0) + ly * (dot3 - dot2);
  gy = hx * (dot2 - dot0) + lx * (dot3 - dot1);
}

template <typename T>
DETR_HD void pixel_grad(const Bilinear<T>& b, T dot0, T dot1, T dot2, T dot3, T& gx, T& gy) {
  pixel_grad(b.lx, b.ly, dot0, dot1, dot2, dot3, gx, gy);
}

// A level whose declared extent does not fit in value's S rows is skipped instead of read out of
// bounds: the Python wrapper reports such input on CPU, but a GPU caller that skips the (syncing)
// check must still never fault. H * W is never formed: for shapes such as 2^32 x 2^32 it wraps
// around int64 (to 0), which would let a huge level pass. W <= (S - start) / H (floor division) is
// the same test as H * W <= S - start for non-negative integers, without the product.
DETR_HD bool level_in_bounds(int64_t start, int64_t H, int64_t W, int64_t S) {
  if (start < 0 || H < 0 || W < 0 || start > S) return false;
  return H == 0 || W <= (S - start) / H;
}

}  // namespace detr_ops::msda
