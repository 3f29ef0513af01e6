// Host-side argument checks and input preparation of detr_ops::matching_cost, shared by the CPU
// and CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

#include "ops/common/matching_cost.h"

namespace detr_ops::matching {

// The schema's class_cost string -> ClassCost (the names detr_ops/ops/matching_cost.py documents).
inline ClassCost parse_class_cost(c10::string_view name) {
  if (name == "softmax") return ClassCost::kSoftmax;
  if (name == "focal") return ClassCost::kFocal;
  if (name == "focal_logsigmoid") return ClassCost::kFocalLogsigmoid;
  if (name == "iou_aware") return ClassCost::kIouAware;
  TORCH_CHECK_VALUE(false, "class_cost must be one of 'softmax', 'focal', 'focal_logsigmoid', 'iou_aware', got '",
                    std::string(name.data(), name.size()), "'");
}

template <typename acc_t>
CostParams<acc_t> cost_params(ClassCost kind, double cost_class, double cost_bbox, double cost_giou, double alpha,
                              double gamma, double iou_power) {
  return {kind,
          static_cast<acc_t>(cost_class),
          static_cast<acc_t>(cost_bbox),
          static_cast<acc_t>(cost_giou),
          static_cast<acc_t>(alpha),
          static_cast<acc_t>(gamma),
          static_cast<acc_t>(iou_power)};
}

inline void check_inputs(const at::Tensor& logits, const at::Tensor& boxes, const at::Tensor& labels,
                         const at::Tensor& tboxes, const at::Tensor& num_targets) {
  TORCH_CHECK_VALUE(logits.dim() == 3, "pred_logits must be [B, Q, K], got shape ", logits.sizes());
  const int64_t B = logits.size(0), Q = logits.size(1);
  TORCH_CHECK_VALUE(boxes.dim() == 3 && boxes.size(0) == B && boxes.size(1) == Q && boxes.size(2) == 4,
                    "pred_boxes must be [B, Q, 4] = [", B, ", ", Q, ", 4], got shape ", boxes.sizes());
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == B, "tgt_labels must be [B, T] with B = ", B,
                    ", got shape ", labels.sizes());
  const int64_t T = labels.size(1);
  TORCH_CHECK_VALUE(tboxes.dim() == 3 && tboxes.size(0) == B && tboxes.size(1) == T && tboxes.size(2) == 4,
                    "tgt_boxes must be [B, T, 4] = [", B, ", ", T, ", 4], got shape ", tboxes.sizes());
  TORCH_CHECK_VALUE(num_targets.dim() == 1 && num_targets.size(0) == B, "num_targets must be [B] with B = ", B,
                    ", got shape ", num_targets.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), "pred_logits must be floating point, got ",
                    logits.scalar_type());
  TORCH_CHECK_VALUE(at::isFloatingType(boxes.scalar_type()) && at::isFloatingType(tboxes.scalar_type()),
                    "pred_boxes and tgt_boxes must be floating point, got ", boxes.scalar_type(), " and ",
                    tboxes.scalar_type());
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong, "tgt_labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(num_targets.scalar_type() == at::kLong, "num_targets must be int64, got ",
                    num_targets.scalar_type());
  for (const at::Tensor* t : {&boxes, &labels, &tboxes, &num_targets}) {
    TORCH_CHECK_VALUE(t->device() == logits.device(), "all inputs must be on pred_logits' device ", logits.device(),
                      ", got one on ", t->device());
  }
}

// The inputs as the kernels read them: contiguous, floats in the accumulation type (float for
// half/bfloat16/float, double for double), and the empty output [B, Q, T].
struct Prepared {
  at::Tensor logits, boxes, tboxes, labels, counts, out;
};

inline Prepared prepare(const at::Tensor& pred_logits, const at::Tensor& pred_boxes, const at::Tensor& tgt_labels,
                        const at::Tensor& tgt_boxes, const at::Tensor& num_targets) {
  check_inputs(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets);
  const at::ScalarType acc = at::toOpMathType(pred_logits.scalar_type());
  Prepared p{pred_logits.to(acc).contiguous(), pred_boxes.to(acc).contiguous(), tgt_boxes.to(acc).contiguous(),
             tgt_labels.contiguous(), num_targets.contiguous(), at::Tensor()};
  p.out = at::empty({pred_logits.size(0), pred_logits.size(1), tgt_labels.size(1)}, p.logits.options());
  return p;
}

}  // namespace detr_ops::matching
