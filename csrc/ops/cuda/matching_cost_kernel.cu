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

namespace detr_ops::matching {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__global__ void matching_cost_kernel(const T* __restrict__ logits, const T* __restrict__ boxes,
                                     const int64_t* __restrict__ labels, const T* __restrict__ tboxes,
                                     const int64_t* __restrict__ counts, T* __restrict__ out, int64_t B, int64_t Q,
                                     int64_t K, int64_t T_, T wc, T wb, T wg, bool focal, T alpha, T gamma) {
  const int lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= B * Q) return;
  const int64_t b = r / Q;
  const T* row = logits + r * K;
  const T inf = std::numeric_limits<T>::infinity();
  T mx = -inf, sum = T(0);
  if (!focal) {
    for (int64_t k = lane; k < K; k += 32) mx = max(mx, row[k]);
    for (int offset = 16; offset > 0; offset /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
    for (int64_t k = lane; k < K; k += 32) sum += exp(row[k] - mx);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  int64_t n = counts[b];
  n = n < 0 ? 0 : (n > T_ ? T_ : n);
  T* o = out + r * T_;
  for (int64_t t = lane; t < T_; t += 32) {
    if (t >= n) {
      o[t] = inf;
      continue;
    }
    const int64_t label = labels[b * T_ + t];
    if (label < 0 || label >= K) {
      o[t] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    const T class_term = focal ? focal_class_cost<T>(row[label], alpha, gamma) : -(exp(row[label] - mx) / sum);
    o[t] = pair_cost<T>(class_term, boxes + r * 4, tboxes + (b * T_ + t) * 4, wc, wb, wg);
  }
}

at::Tensor matching_cost_cuda(const at::Tensor& pred_logits, const at::Tensor& pred_boxes,
                              const at::Tensor& tgt_labels, const at::Tensor& tgt_boxes,
                              const at::Tensor& num_targets, double cost_class, double cost_bbox, double cost_giou,
                              bool focal, double focal_alpha, double focal_gamma) {
  const c10::cuda::CUDAGuard guard(pred_logits.device());
  // a named struct, not structured bindings: C++17 lambdas (the CUDA build) cannot capture those
  const Prepared in = prepare(pred_logits, pred_boxes, tgt_labels, tgt_boxes, num_targets);
  const at::Tensor &logits = in.logits, &boxes = in.boxes, &tboxes = in.tboxes, &labels = in.labels;
  const at::Tensor &counts = in.counts, &out = in.out;
  const int64_t B = pred_logits.size(0), Q = pred_logits.size(1), K = pred_logits.size(2), T_ = tgt_labels.size(1);
  if (out.numel() == 0) return out;
  const unsigned int blocks = static_cast<unsigned int>((B * Q + kWarpsPerBlock - 1) / kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "matching_cost_cuda", [&] {
    matching_cost_kernel<scalar_t><<<blocks, kWarpsPerBlock * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logits.const_data_ptr<scalar_t>(), boxes.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(),
        tboxes.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), B, Q,
        K, T_, static_cast<scalar_t>(cost_class), static_cast<scalar_t>(cost_bbox), static_cast<scalar_t>(cost_giou),
        focal, static_cast<scalar_t>(focal_alpha), static_cast<scalar_t>(focal_gamma));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("matching_cost", &matching_cost_cuda);
}

}  // namespace detr_ops::matching
