// The DETR / Deformable DETR matching cost of one (prediction, target) pair, shared by the CPU and
// CUDA kernels. The operation order follows DETR's models/matcher.py (softmax, cdist p=1, GIoU of
// the cxcywh boxes converted to corners, then bbox + class + giou weighted), so that the costs, and
// hence the assignments, match the unfused computation.
#pragma once

#include <cmath>

#include "ops/common/box_iou.h"
#include "ops/common/hostdevice.h"

namespace detr_ops::matching {

struct Weights {
  double cost_class, cost_bbox, cost_giou;
  bool focal;
  double focal_alpha, focal_gamma;
};

// Deformable DETR's focal class cost of probability p = sigmoid(logit):
//   alpha * (1-p)^gamma * -log(p + 1e-8)  -  (1-alpha) * p^gamma * -log(1 - p + 1e-8)
template <typename T>
DETR_HD T focal_class_cost(T logit, T alpha, T gamma) {
  using std::exp;  // float overloads on the host; nvcc provides the same names on the device
  using std::log;
  using std::pow;
  const T p = T(1) / (T(1) + exp(-logit));
  const T neg = (T(1) - alpha) * pow(p, gamma) * -log(T(1) - p + T(1e-8));
  const T pos = alpha * pow(T(1) - p, gamma) * -log(p + T(1e-8));
  return pos - neg;
}

// Cost of one pair, given the class term already computed for the target's label.
template <typename T>
DETR_HD T pair_cost(T class_term, const T* pred_box, const T* tgt_box, T w_class, T w_bbox, T w_giou) {
  using std::fabs;
  const T l1 = fabs(pred_box[0] - tgt_box[0]) + fabs(pred_box[1] - tgt_box[1]) + fabs(pred_box[2] - tgt_box[2]) +
               fabs(pred_box[3] - tgt_box[3]);
  const box::Box<T> a = box::make_box<T>(pred_box[0], pred_box[1], pred_box[2], pred_box[3], true);
  const box::Box<T> b = box::make_box<T>(tgt_box[0], tgt_box[1], tgt_box[2], tgt_box[3], true);
  const T giou = box::iou_value<T>(a, b, T(0), true);
  return w_bbox * l1 + w_class * class_term + w_giou * -giou;
}

}  // namespace detr_ops::matching
