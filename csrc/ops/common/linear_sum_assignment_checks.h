// Host-side argument checks of detr_ops::batched_linear_sum_assignment, shared by the CPU and CUDA
// kernels so that a C++ caller gets the same messages as a Python caller.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "ops/common/linear_sum_assignment.h"

namespace detr_ops::lsa {

inline void check_sizes_tensor(const c10::optional<at::Tensor>& t, const at::Tensor& cost, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->dim() == 1 && t->size(0) == cost.size(0), name,
                    " must be an int64 tensor of shape [B] = [", cost.size(0), "], got ", t->scalar_type(),
                    " of shape ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == cost.device(), name, " must be on the device of cost (", cost.device(),
                    "), got ", t->device());
}

inline void check_inputs(const at::Tensor& cost, const c10::optional<at::Tensor>& num_rows,
                         const c10::optional<at::Tensor>& num_cols, int64_t capacity,
                         const c10::optional<at::Tensor>& capacities) {
  TORCH_CHECK_VALUE(cost.dim() == 3, "cost must be a [B, R, C] tensor, got shape ", cost.sizes());
  const auto dt = cost.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                    "cost must be float16, bfloat16, float32 or float64, got ", dt);
  check_sizes_tensor(num_rows, cost, "num_rows");
  check_sizes_tensor(num_cols, cost, "num_cols");
  check_sizes_tensor(capacities, cost, "capacities");
  TORCH_CHECK_VALUE(capacity >= 0, "capacity must be >= 0, got ", capacity);
}

// Columns of the widest virtual (tiled) problem a batch can hold when every effective capacity is
// at most `capacity`: max(R, min(capacity, R + ceil(R / C)) * C) (effective_copies), saturated
// instead of overflowing. The GPU kernels size their per-problem workspace with it.
inline int64_t max_virtual_columns(int64_t R, int64_t C, int64_t capacity) {
  const int64_t copies = effective_copies(capacity, R, C);
  int64_t cols = 0;
  if (__builtin_mul_overflow(copies, C, &cols)) cols = std::numeric_limits<int64_t>::max();
  return std::max(R, cols);
}

}  // namespace detr_ops::lsa
