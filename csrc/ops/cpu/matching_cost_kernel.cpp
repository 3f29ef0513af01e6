// CPU kernel of detr_ops::matching_cost: one task per (image, query) row costs every target of
// that image (class + L1 + GIoU). No [B*Q, sum T] matrix.
// DETR's softmax class cost needs a normalisation over all K classes; that table, softmax [B, Q, K],
// comes from ATen's vectorised softmax kernel (a scalar exp per logit dominated the fused loop),
// called by each task on its own rows (softmax is per row, so the table is the one at::softmax
// gives), serially inside our pool: one fork-join per call, not ATen's OpenMP team and then ours.
// The other class costs (focal, RF-DETR's logsigmoid focal, DEIMv2's IoU-aware) depend on the
// target's logit only, so they are computed in the loop for the T targets (a table over all K
// classes of pow and log costs more than it saves).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/_softmax_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/common/matching_cost.h"
#include "ops/common/matching_cost_checks.h"
#include "ops/cpu/parallel_tasks.h"

namespace detr_ops::matching {
namespace {

at::Tensor matching_cost_cpu(const at::Tensor& pred_logits, const at::Tensor& pred_boxes, const at::Tensor& tgt_labels,
                             const at::Tensor& tgt_boxes, const at::Tensor& num_targets, double cost_class,
                             double cost_bbox, double cost_giou, c10::string_view class_cost, double focal_alpha,
                             double focal_gamma, double iou_power) {
  const ClassCost kind = parse_class_cost(class_cost);
  // a named struct, not structured bindings: C++17 lambdas (the CUDA build) cannot capture those
  const Prepared in = prepare(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets);
  const at::Tensor &logits = in.logits, &boxes = in.boxes, &tboxes = in.tboxes, &labels = in.labels;
  const at::Tensor &counts = in.counts, &out = in.out;
  const int64_t B = pred_logits.size(0), Q = pred_logits.size(1), K = pred_logits.size(2), T = tgt_labels.size(1);
  if (out.numel() == 0) return out;
  // softmax for DETR's cost, filled by the tasks and negated per pair below (exact; a negated
  // [B, Q, K] copy would cost a pass over memory and another large allocation); the other class
  // costs read the logits themselves
  const bool softmax = kind == ClassCost::kSoftmax;
  const at::Tensor class_table = softmax ? at::empty_like(logits) : logits;
  const at::Tensor logit_rows = logits.view({B * Q, K});
  const at::Tensor table_rows = class_table.view({B * Q, K});
  // prepare() converted the floats to the accumulation type: scalar_t is float or double
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "matching_cost_cpu", [&] {
    const scalar_t* pb = boxes.const_data_ptr<scalar_t>();
    const scalar_t* ptb = tboxes.const_data_ptr<scalar_t>();
    const int64_t* plab = labels.const_data_ptr<int64_t>();
    const int64_t* pn = counts.const_data_ptr<int64_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    const CostParams<scalar_t> params =
        cost_params<scalar_t>(kind, cost_class, cost_bbox, cost_giou, focal_alpha, focal_gamma, iou_power);
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity(), nan = std::numeric_limits<scalar_t>::quiet_NaN();
    const scalar_t* pc = class_table.const_data_ptr<scalar_t>();
    const scalar_t sign = kind == ClassCost::kSoftmax ? scalar_t(-1) : scalar_t(1);
    // tasks of about 4096 pairs, handed out one at a time (cpu::parallel_tasks: a late thread does less)
    const int64_t rows_per_task = std::max<int64_t>(1, 4096 / std::max<int64_t>(T, 1));
    const int64_t num_tasks = (B * Q + rows_per_task - 1) / rows_per_task;
    struct NoState {};
    auto body = [&](int64_t task, NoState&) {
      const int64_t begin = task * rows_per_task, end = std::min(B * Q, begin + rows_per_task);
      if (softmax) {
        // the CPU kernel itself (at::cpu::, no dispatcher): no autograd or inference-mode checks
        // on a helper thread, and serial here (cpu::SerialAten)
        at::Tensor rows = table_rows.narrow(0, begin, end - begin);
        at::cpu::_softmax_out(rows, logit_rows.narrow(0, begin, end - begin), 1, /*half_to_float=*/false);
      }
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / Q;
        const scalar_t* row = pc + r * K;
        const int64_t n = pn[b];
        scalar_t* o = po + r * T;
        if (n < 0 || n > T) {  // a count the block cannot hold: NaN, never a silent clamp
          std::fill(o, o + T, nan);
          continue;
        }
        for (int64_t t = 0; t < T; ++t) {
          if (t >= n) {
            o[t] = inf;
            continue;
          }
          const int64_t label = plab[b * T + t];
          if (label < 0 || label >= K) {
            o[t] = nan;
            continue;
          }
          o[t] = pair_cost<scalar_t>(sign * row[label], pb + r * 4, ptb + (b * T + t) * 4, params);
        }
      }
    };
    cpu::parallel_tasks<NoState>(num_tasks, body, /*parallel=*/num_tasks > 1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("matching_cost", &matching_cost_cpu);
}

}  // namespace detr_ops::matching
