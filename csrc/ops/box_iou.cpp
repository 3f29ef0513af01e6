// Schemas of the pairwise box-overlap operator. Kernels: ops/cpu/box_iou_kernel.cpp,
// ops/cuda/box_iou_kernel.cu, detr_ops/triton/box_iou.py; fake kernels, autograd and the Triton
// twin: detr_ops/_registrations.py; Python API and input checks: detr_ops/ops/box_iou.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // boxes1 [N,4] x boxes2 [M,4] -> [N,M], or batched [B,N,4] x [B,M,4] -> [B,N,M]; IoU or GIoU.
  m.def("pairwise_iou(Tensor boxes1, Tensor boxes2, str box_format, bool generalized) -> Tensor");
  m.def(
      "pairwise_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str box_format, bool generalized)"
      " -> (Tensor, Tensor)");
}
