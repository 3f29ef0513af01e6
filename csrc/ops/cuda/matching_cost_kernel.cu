// CUDA kernel of detr_ops::matching_cost: one warp per (image, query) row. The lanes reduce the
// row's softmax statistics over K with shuffles, then sweep the image's targets (coalesced stores
// along T). One launch for the whole batch, no [B*Q, sum T] matrix, no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "ops/common/matching_cost.h"
#include "ops/common/matching_cost_checks.h"
#include "ops/cuda/cuda_utils.cuh"

namespace detr_ops::matching {
namespace {

constexpr int kWarpsPerBlock = 8;

// T: number of targets per image (the schema's [B, Q, T]); scalar_t: float or double, the
// accumulation type prepare() converted the floats to.
template <typename scalar_t>
__global__ void matching_cost_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ boxes,
                                     const int64_t* __restrict__ labels, const scalar_t* __restrict__ tboxes,
                                     const int64_t* __restrict__ counts, scalar_t* __restrict__ out, int64_t B,
                                     int64_t Q, int64_t K, int64_t T, CostParams<scalar_t> params) {
  const int lane = cuda::lane_id();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + cuda::warp_id();
  if (r >= B * Q) return;  // warp-uniform: the shuffles below see whole warps
  const int64_t b = r / Q;
  const scalar_t* row = logits + r * K;
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  scalar_t mx = -inf, sum = scalar_t(0);
  if (params.kind == ClassCost::kSoftmax) {  // the other class costs read the label's logit only
    for (int64_t k = lane; k < K; k += cuda::kWarpSize) mx = max(mx, row[k]);
    mx = cuda::warp_max(mx);
    for (int64_t k = lane; k < K; k += cuda::kWarpSize) sum += exp(row[k] - mx);
    sum = cuda::warp_sum(sum);
  }
  const int64_t n = counts[b];
  const bool bad_count = n < 0 || n > T;  // NaN block, never a silent clamp (the solver reports it)
  scalar_t* o = out + r * T;
  for (int64_t t = lane; t < T; t += cuda::kWarpSize) {
    if (bad_count) {
      o[t] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    if (t >= n) {
      o[t] = inf;
      continue;
    }
    const int64_t label = labels[b * T + t];
    if (label < 0 || label >= K) {
      o[t] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    const scalar_t class_input = params.kind == ClassCost::kSoftmax ? -(exp(row[label] - mx) / sum) : row[label];
    o[t] = pair_cost<scalar_t>(class_input, boxes + r * 4, tboxes + (b * T + t) * 4, params);
  }
}

at::Tensor matching_cost_cuda(const at::Tensor& pred_logits, const at::Tensor& pred_boxes,
                              const at::Tensor& tgt_labels, const at::Tensor& tgt_boxes,
                              const at::Tensor& num_targets, double cost_class, double cost_bbox, double cost_giou,
                              c10::string_view class_cost, double focal_alpha, double focal_gamma, double iou_power) {
  const ClassCost kind = parse_class_cost(class_cost);
  // a named struct, not structured bindings: C++17 lambdas (the CUDA build) cannot capture those
  const Prepared in = prepare(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets);
  const at::Tensor &logits = in.logits, &boxes = in.boxes, &tboxes = in.tboxes, &labels = in.labels;
  const at::Tensor &counts = in.counts, &out = in.out;
  const int64_t B = pred_logits.size(0), Q = pred_logits.size(1), K = pred_logits.size(2), T = tgt_labels.size(1);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(pred_logits.device());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "matching_cost_cuda", [&] {
    matching_cost_kernel<scalar_t><<<cuda::blocks_for(B * Q, kWarpsPerBlock), kWarpsPerBlock * cuda::kWarpSize, 0,
                                     c10::cuda::getCurrentCUDAStream()>>>(
        logits.const_data_ptr<scalar_t>(), boxes.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(),
        tboxes.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), B, Q,
        K, T, cost_params<scalar_t>(kind, cost_class, cost_bbox, cost_giou, focal_alpha, focal_gamma, iou_power));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("matching_cost", &matching_cost_cuda);
}

}  // namespace detr_ops::matching
