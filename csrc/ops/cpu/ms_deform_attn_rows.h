// Row primitives of the MSDA CPU kernels: the loops over one head's D channels.
//
// kD is the head dim when it is known at compile time (32 and 64 cover Deformable DETR, DINO,
// RT-DETR and Mask2Former), 0 for any other D given at run time. A fixed D lets g++ unroll the
// loop into whole vector registers with no remainder loop, which the kernels' hot loops need:
// every bilinear corner is one of these rows.
#pragma once

#include <cstdint>

namespace detr_ops::msda {

template <int kD>
inline int64_t head_dim(int64_t D) {
  return kD > 0 ? kD : D;
}

// Independent partial sums of a dot product: a single running sum is a serial dependency chain the
// compiler may not reorder (no -ffast-math); kLanes fixed partial sums, added in a fixed order,
// vectorise and stay deterministic.
constexpr int kLanes = 8;

// acc[d] += w * r[d] over D channels.
template <int kD, typename acc_t, typename src_t>
inline void axpy_row(acc_t* __restrict__ acc, const src_t* __restrict__ r, acc_t w, int64_t D_) {
  const int64_t D = head_dim<kD>(D_);
  for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<acc_t>(r[d]);
}

// acc[d] += w0 * r0[d] + w1 * r1[d] + w2 * r2[d] + w3 * r3[d]: the four corners of an interior point
// in one sweep.
template <int kD, typename acc_t, typename src_t>
inline void axpy_rows4(acc_t* __restrict__ acc, const src_t* __restrict__ r0, const src_t* __restrict__ r1,
                       const src_t* __restrict__ r2, const src_t* __restrict__ r3, acc_t w0, acc_t w1, acc_t w2,
                       acc_t w3, int64_t D_) {
  const int64_t D = head_dim<kD>(D_);
  for (int64_t d = 0; d < D; ++d) {
    acc[d] += w0 * static_cast<acc_t>(r0[d]) + w1 * static_cast<acc_t>(r1[d]) + w2 * static_cast<acc_t>(r2[d]) +
              w3 * static_cast<acc_t>(r3[d]);
  }
}

// One bilinear corner of the backward: returns <g, v> and adds w * g into gv (the corner's value
// row and its grad_value row).
template <int kD, typename acc_t, typename src_t>
inline acc_t corner_backward(const acc_t* __restrict__ g, const src_t* __restrict__ v, acc_t* __restrict__ gv, acc_t w,
                             int64_t D_) {
  const int64_t D = head_dim<kD>(D_);
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      part[j] += g[d + j] * static_cast<acc_t>(v[d + j]);
      gv[d + j] += w * g[d + j];
    }
  }
  acc_t sum = acc_t(0);
  if constexpr (kD == 0 || kD % kLanes != 0) {  // a remainder (a fixed D of 8k has none)
    for (; d < D; ++d) {
      sum += g[d] * static_cast<acc_t>(v[d]);
      gv[d] += w * g[d];
    }
  }
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

}  // namespace detr_ops::msda
