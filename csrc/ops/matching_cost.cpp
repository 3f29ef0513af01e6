// Schema of the fused DETR-family matching cost. Kernels: ops/cpu/matching_cost_kernel.cpp,
// ops/cuda/matching_cost_kernel.cu, detr_ops/triton/matching_cost.py; fake kernel:
// detr_ops/_registrations.py; Python wrapper: detr_ops/ops/matching_cost.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // pred_logits [B,Q,K], pred_boxes [B,Q,4] (cxcywh), tgt_labels [B,T] int64, tgt_boxes [B,T,4]
  // (cxcywh), num_targets [B] int64 -> cost [B,Q,T] (float32; float64 for float64 input):
  //   cost_bbox * L1(pred, tgt) + cost_class * class_term + cost_giou * -GIoU(pred, tgt)
  // class_cost names the class term: "softmax" (DETR), "focal" (Deformable DETR; focal_alpha,
  // focal_gamma), "focal_logsigmoid" (RF-DETR), "iou_aware" (DEIMv2: -(sigmoid * IoU^iou_power)).
  // Columns t >= num_targets[b] are +inf (never chosen); a label outside [0, K) makes its column
  // NaN, and a num_targets[b] outside [0, T] the whole image's block NaN, which the assignment
  // solver reports as invalid instead of reading out of bounds.
  m.def(
      "matching_cost(Tensor pred_logits, Tensor pred_boxes, Tensor tgt_labels, Tensor tgt_boxes, Tensor num_targets,"
      " float cost_class, float cost_bbox, float cost_giou, str class_cost, float focal_alpha, float focal_gamma,"
      " float iou_power) -> Tensor");
}
