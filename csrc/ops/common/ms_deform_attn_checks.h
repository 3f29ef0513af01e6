// Host-side argument checks of the ms_deform_attn operators, shared by the CPU and CUDA kernels.
// They check what memory safety needs (ranks, matching sizes, dtypes, devices); the value-level
// invariants (spatial shapes summing to S, level start indices) are checked in Python, where the
// caller chooses whether to pay a device sync for them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace detr_ops::msda {

struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

inline Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights) {
  TORCH_CHECK_VALUE(value.dim() == 4, "value must be [N, S, M, D], got shape ", value.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(value.scalar_type()), "value must be a floating tensor, got ",
                    value.scalar_type());
  TORCH_CHECK_VALUE(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
                    "spatial_shapes must be [L, 2], got shape ", spatial_shapes.sizes());
  TORCH_CHECK_VALUE(spatial_shapes.scalar_type() == at::kLong, "spatial_shapes must be int64, got ",
                    spatial_shapes.scalar_type());
  TORCH_CHECK_VALUE(level_start_index.scalar_type() == at::kLong, "level_start_index must be int64, got ",
                    level_start_index.scalar_type());
  const Sizes s{value.size(0), value.size(1), value.size(2), value.size(3),
                sampling_locations.dim() == 6 ? sampling_locations.size(1) : -1, spatial_shapes.size(0),
                sampling_locations.dim() == 6 ? sampling_locations.size(4) : -1};
  TORCH_CHECK_VALUE(level_start_index.dim() == 1 && level_start_index.size(0) == s.L,
                    "level_start_index must be [L] with L = ", s.L, ", got shape ", level_start_index.sizes());
  TORCH_CHECK_VALUE(sampling_locations.dim() == 6 && sampling_locations.size(0) == s.N &&
                        sampling_locations.size(2) == s.M && sampling_locations.size(3) == s.L &&
                        sampling_locations.size(5) == 2,
                    "sampling_locations must be [N, Lq, M, L, P, 2] = [", s.N, ", Lq, ", s.M, ", ", s.L,
                    ", P, 2], got shape ", sampling_locations.sizes());
  TORCH_CHECK_VALUE(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
                    "attention_weights must be [N, Lq, M, L, P] = ", sampling_locations.sizes().slice(0, 5),
                    ", got shape ", attention_weights.sizes());
  for (const at::Tensor* t : {&sampling_locations, &attention_weights}) {
    TORCH_CHECK_VALUE(t->scalar_type() == value.scalar_type(),
                      "value, sampling_locations and attention_weights must have the same dtype, got ",
                      value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
                      attention_weights.scalar_type());
  }
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK_VALUE(t->device() == value.device(), "all ms_deform_attn inputs must be on value's device ",
                      value.device(), ", got one on ", t->device());
  }
  return s;
}

inline void check_grad_output(const at::Tensor& grad_output, const Sizes& s, const at::Tensor& value) {
  TORCH_CHECK_VALUE(grad_output.dim() == 3 && grad_output.size(0) == s.N && grad_output.size(1) == s.Lq &&
                        grad_output.size(2) == s.M * s.D,
                    "grad_output must be [N, Lq, M*D] = [", s.N, ", ", s.Lq, ", ", s.M * s.D, "], got shape ",
                    grad_output.sizes());
  TORCH_CHECK_VALUE(grad_output.device() == value.device(), "grad_output must be on ", value.device(), ", got ",
                    grad_output.device());
}

}  // namespace detr_ops::msda
