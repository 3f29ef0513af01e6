// Bilinear sampling of one multi-scale deformable attention point, shared by the CPU and CUDA
// kernels so that the corner and weight rules are written once.
//
// The rule is F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False) on one
// level of size H x W: a normalised location (x, y) in [0, 1] maps to the pixel coordinate
// (x * W - 0.5, y * H - 0.5); the four surrounding pixels are weighted bilinearly and a corner
// that lies off the map contributes zero (value and gradient). A point with x < -1, x >= W,
// y < -1 or y >= H has no corner on the map. NaN and +-inf fail those comparisons too, so such a
// point is rejected before its coordinate is converted to an integer (undefined for them).
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

template <typename T>
DETR_HD Bilinear<T> bilinear(T loc_x, T loc_y, int64_t H, int64_t W) {
  Bilinear<T> b;
  const T x = loc_x * static_cast<T>(W) - T(0.5);
  const T y = loc_y * static_cast<T>(H) - T(0.5);
  b.any = x >= T(-1) && x < static_cast<T>(W) && y >= T(-1) && y < static_cast<T>(H);
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
// check must still never fault.
DETR_HD bool level_in_bounds(int64_t start, int64_t H, int64_t W, int64_t S) {
  return start >= 0 && H >= 0 && W >= 0 && start <= S && H * W <= S - start;
}

}  // namespace detr_ops::msda
