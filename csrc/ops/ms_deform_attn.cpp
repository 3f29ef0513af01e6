// Schemas of multi-scale deformable attention. Kernels: ops/cpu/ms_deform_attn_kernel.cpp,
// ops/cuda/ms_deform_attn_kernel.cu; fake kernels, autograd and the Triton twins
// (ms_deform_attn*_triton): detr_ops/_registrations.py; input validation:
// detr_ops/ops/ms_deform_attn.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // value [N, S, M, D], spatial_shapes [L, 2] int64 (H, W), level_start_index [L] int64,
  // sampling_locations [N, Lq, M, L, P, 2] (x, y in [0, 1]), attention_weights [N, Lq, M, L, P]
  // -> [N, Lq, M*D]: per level, bilinear sampling as Deformable DETR's 2020 kernel (see
  // ops/common/ms_deform_attn.h), weighted, summed.
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations,"
      " Tensor attention_weights) -> Tensor");
  // -> (grad_value, grad_sampling_locations, grad_attention_weights).
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index,"
      " Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
  // Per-level point counts (RT-DETRv2, D-FINE): sampling_locations [N, Lq, M, K, 2] and
  // attention_weights [N, Lq, M, K] with K = sum(num_points_list), level l owning the next
  // num_points_list[l] points. Same kernels, no padding. (A separate op, so that the drop-in op
  // above keeps Deformable DETR's schema.)
  m.def(
      "ms_deform_attn_points(Tensor value, Tensor spatial_shapes, Tensor level_start_index,"
      " Tensor sampling_locations, Tensor attention_weights, SymInt[] num_points_list) -> Tensor");
  m.def(
      "ms_deform_attn_points_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes,"
      " Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, SymInt[] num_points_list)"
      " -> (Tensor, Tensor, Tensor)");
}
