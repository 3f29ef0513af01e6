// Schemas of the elementwise GIoU loss. Kernels: ops/cpu/giou_loss_kernel.cpp,
// ops/cuda/giou_loss_kernel.cu, detr_ops/triton/box_iou.py; fake kernels, autograd and the Triton
// twin: detr_ops/_registrations.py; Python API and input checks: detr_ops/ops/box_iou.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // Elementwise 1 - GIoU of boxes1[..., 4] and boxes2[..., 4], torchvision's generalized_box_iou_loss
  // without the reduction; computed and returned in float32 (float64 for float64 input).
  m.def("giou_loss(Tensor boxes1, Tensor boxes2, str box_format, float eps) -> Tensor");
  m.def(
      "giou_loss_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str box_format, float eps)"
      " -> (Tensor, Tensor)");
}
