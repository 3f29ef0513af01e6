// Loading and storing one [4]-number box on CPU: stored format <-> corners in the accumulation type
// (float for half and bfloat16), shared by the pairwise and the elementwise box kernels.
#pragma once

#include <ATen/OpMathType.h>

#include "ops/common/box_iou.h"

namespace detr_ops::box {

template <typename scalar_t>
inline Box<at::opmath_type<scalar_t>> load_box(const scalar_t* p, bool cxcywh) {
  using acc_t = at::opmath_type<scalar_t>;
  return make_box<acc_t>(p[0], p[1], p[2], p[3], cxcywh);
}

template <typename scalar_t>
inline void store_box(scalar_t* p, const Box<at::opmath_type<scalar_t>>& g) {
  p[0] = narrow<scalar_t>(g.x0);
  p[1] = narrow<scalar_t>(g.y0);
  p[2] = narrow<scalar_t>(g.x1);
  p[3] = narrow<scalar_t>(g.y1);
}

}  // namespace detr_ops::box
