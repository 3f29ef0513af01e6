// The matching cost of one (prediction, target) pair, shared by the CPU and CUDA kernels. The
// operation order follows each codebase's matcher (DETR's models/matcher.py: softmax, cdist p=1,
// GIoU of the cxcywh boxes converted to corners, then bbox + class + giou weighted), so that the
// costs, and hence the assignments, match the unfused computation.
//
// acc_t is the type the cost is computed in: float for half/bfloat16/float inputs, double for
// double. (In the matching-cost files T is always the number of targets, as in the schema's
// [B, Q, T].)
#pragma once

#include <cmath>

#include "ops/common/box_iou.h"
#include "ops/common/hostdevice.h"

namespace detr_ops::matching {

// The class term of the cost (the schema's class_cost string, parsed by matching_cost_checks.h).
enum class ClassCost : int {
  kSoftmax = 0,          // DETR: -softmax(logits)[label]
  kFocal = 1,            // Deformable DETR, DINO, H-DETR, D-FINE, DEIM: focal cost with log(p + 1e-8)
  kFocalLogsigmoid = 2,  // RF-DETR: the same focal cost with log(p) as logsigmoid(logit)
  kIouAware = 3,         // DEIMv2 (change_matcher): -(sigmoid(logit)[label] * IoU^iou_power)
};

// Everything but the boxes that one pair's cost depends on.
template <typename acc_t>
struct CostParams {
  ClassCost kind;
  acc_t w_class, w_bbox, w_giou;
  acc_t alpha, gamma;  // focal costs
  acc_t iou_power;     // IoU-aware cost
};

template <typename acc_t>
DETR_HD acc_t sigmoid(acc_t x) {
  using std::exp;  // float overloads on the host; nvcc provides the same names on the device
  return acc_t(1) / (acc_t(1) + exp(-x));
}

// log(sigmoid(x)) as torch.nn.functional.logsigmoid computes it: min(x, 0) - log1p(exp(-|x|)).
template <typename acc_t>
DETR_HD acc_t log_sigmoid(acc_t x) {
  using std::exp;
  using std::fabs;
  using std::log1p;
  return (x < acc_t(0) ? x : acc_t(0)) - log1p(exp(-fabs(x)));
}

// Deformable DETR's focal class cost of probability p = sigmoid(logit):
//   alpha * (1-p)^gamma * -log(p + 1e-8)  -  (1-alpha) * p^gamma * -log(1 - p + 1e-8)
template <typename acc_t>
DETR_HD acc_t focal_class_cost(acc_t logit, acc_t alpha, acc_t gamma) {
  using std::log;
  using std::pow;
  const acc_t p = sigmoid(logit);
  const acc_t neg = (acc_t(1) - alpha) * pow(p, gamma) * -log(acc_t(1) - p + acc_t(1e-8));
  const acc_t pos = alpha * pow(acc_t(1) - p, gamma) * -log(p + acc_t(1e-8));
  return pos - neg;
}

// RF-DETR's focal class cost (rfdetr/models/matcher.py): the logs as logsigmoid, no 1e-8:
//   alpha * (1-p)^gamma * -logsigmoid(logit)  -  (1-alpha) * p^gamma * -logsigmoid(-logit)
template <typename acc_t>
DETR_HD acc_t focal_logsigmoid_class_cost(acc_t logit, acc_t alpha, acc_t gamma) {
  using std::pow;
  const acc_t p = sigmoid(logit);
  const acc_t neg = (acc_t(1) - alpha) * pow(p, gamma) * -log_sigmoid(-logit);
  const acc_t pos = alpha * pow(acc_t(1) - p, gamma) * -log_sigmoid(logit);
  return pos - neg;
}

// Cost of one pair. class_input is the label's -softmax value for kSoftmax (the kernels compute
// the row's normalisation once) and the label's logit for every other kind.
template <typename acc_t>
DETR_HD acc_t pair_cost(acc_t class_input, const acc_t* pred_box, const acc_t* tgt_box, const CostParams<acc_t>& c) {
  using std::fabs;
  using std::pow;
  const acc_t l1 = fabs(pred_box[0] - tgt_box[0]) + fabs(pred_box[1] - tgt_box[1]) + fabs(pred_box[2] - tgt_box[2]) +
                   fabs(pred_box[3] - tgt_box[3]);
  const box::Box<acc_t> a = box::make_box<acc_t>(pred_box[0], pred_box[1], pred_box[2], pred_box[3], true);
  const box::Box<acc_t> b = box::make_box<acc_t>(tgt_box[0], tgt_box[1], tgt_box[2], tgt_box[3], true);
  const acc_t giou = box::iou_value<acc_t>(a, b, acc_t(0), true);
  acc_t class_term;
  switch (c.kind) {
    case ClassCost::kFocal:
      class_term = focal_class_cost<acc_t>(class_input, c.alpha, c.gamma);
      break;
    case ClassCost::kFocalLogsigmoid:
      class_term = focal_logsigmoid_class_cost<acc_t>(class_input, c.alpha, c.gamma);
      break;
    case ClassCost::kIouAware:
      // DEIMv2: C = (-1) * (class_score * torch.pow(bbox_iou, iou_order_alpha)), with its
      // box_iou (plain IoU). Its cost has no L1 / GIoU terms: weigh them 0 to reproduce it (x +
      // 0 is exact, and a NaN box still gives a NaN cost through 0 * NaN).
      class_term = -(sigmoid(class_input) * pow(box::iou_value<acc_t>(a, b, acc_t(0), false), c.iou_power));
      break;
    default:
      class_term = class_input;
  }
  return c.w_bbox * l1 + c.w_class * class_term + c.w_giou * -giou;
}

}  // namespace detr_ops::matching
