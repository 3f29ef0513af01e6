// Host-side argument checks of detr_ops::batched_linear_sum_assignment, shared by the CPU and CUDA
// kernels so that a C++ caller gets the same messages as a Python caller.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

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
                         const c10::optional<at::Tensor>& num_cols) {
  TORCH_CHECK_VALUE(cost.dim() == 3, "cost must be a [B, R, C] tensor, got shape ", cost.sizes());
  const auto dt = cost.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                    "cost must be float16, bfloat16, float32 or float64, got ", dt);
  check_sizes_tensor(num_rows, cost, "num_rows");
  check_sizes_tensor(num_cols, cost, "num_cols");
}

}  // namespace detr_ops::lsa
