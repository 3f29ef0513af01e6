// Schemas of multi-scale deformable attention. Kernels: ops/cpu/ms_deform_attn_kernel.cpp,
// ops/cuda/ms_deform_attn_kernel.cu; fake kernels, autograd and input validation:
// detr_ops/ops/ms_deform_attn.py. The Triton twins (ms_deform_attn_triton*) are defined in Python.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // value [N, S, M, D], spatial_shapes [L, 2] int64 (H, W), level_start_index [L] int64,
  // sampling_locations [N, Lq, M, L, P, 2] (x, y in [0, 1]), attention_weights [N, Lq, M, L, P]
  // -> [N, Lq, M*D]: per level, grid_sample(bilinear, zeros, align_corners=False), weighted, summed.
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations,"
      " Tensor attention_weights) -> Tensor");
  // -> (grad_value, grad_sampling_locations, grad_attention_weights).
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index,"
      " Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)");
}
