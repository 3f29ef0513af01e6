// The DETR / Deformable DETR matching cost of one (prediction, target) pair, shared by the CPU and
// CUDA kernels. The operation order follows DETR's models/matcher.py (softmax, cdist p=1, GIoU of
// the cxcywh boxes converted to corners, then bbox + class + giou weighted), so that the costs, and
// hence the assignments, match the unfused computation.
//
// acc_t is the type the cost is computed in: float for half/bfloat16/float inputs, double for
// double. (In the matching-cost files T is always the number of targets, as in the schema's
// [B, Q, T].)
#pragma once

#include <cmath>

#include "ops/common/box_iou.h"
#include "ops/common/hostdevice.h"

namespace detr_ops::matching {

// Deformable DETR's focal class cost of probability p = sigmoid(logit):
//   alpha * (1-p)^gamma * -log(p + 1e-8)  -  (1-alpha) * p^gamma * -log(1 - p + 1e-8)
template <typename acc_t>
DETR_HD acc_t focal_class_cost(acc_t logit, acc_t alpha, acc_t gamma) {
  using std::exp;  // float overloads on the host; nvcc provides the same names on the device
  using std::log;
  using std::pow;
  const acc_t p = acc_t(1) / (acc_t(1) + exp(-logit));
  const acc_t neg = (acc_t(1) - alpha) * pow(p, gamma) * -log(acc_t(1) - p + acc_t(1e-8));
  const acc_t pos = alpha * pow(acc_t(1) - p, gamma) * -log(p + acc_t(1e-8));
  return pos - neg;
}

// Cost of one pair, given the class term already computed for the target's label.
template <typename acc_t>
DETR_HD acc_t pair_cost(acc_t class_term, const acc_t* pred_box, const acc_t* tgt_box, acc_t w_class, acc_t w_bbox,
                        acc_t w_giou) {
  using std::fabs;
  const acc_t l1 = fabs(pred_box[0] - tgt_box[0]) + fabs(pred_box[1] - tgt_box[1]) + fabs(pred_box[2] - tgt_box[2]) +
                   fabs(pred_box[3] - tgt_box[3]);
  const box::Box<acc_t> a = box::make_box<acc_t>(pred_box[0], pred_box[1], pred_box[2], pred_box[3], true);
  const box::Box<acc_t> b = box::make_box<acc_t>(tgt_box[0], tgt_box[1], tgt_box[2], tgt_box[3], true);
  const acc_t giou = box::iou_value<acc_t>(a, b, acc_t(0), true);
  return w_bbox * l1 + w_class * class_term + w_giou * -giou;
}

}  // namespace detr_ops::matching
