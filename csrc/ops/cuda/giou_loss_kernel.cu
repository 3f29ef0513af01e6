// CUDA kernels of the elementwise GIoU loss, detr_ops::giou_loss and its backward (schemas in
// ops/giou_loss.cpp, math in ops/common/box_iou.h): one thread per pair of boxes, in a grid-stride
// loop. Pairs are independent, so the result does not depend on the launch shape.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops/common/box_iou_checks.h"
#include "ops/common/box_iou.h"
#include "ops/cuda/cuda_utils.cuh"

namespace detr_ops::box {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void giou_loss_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                 at::opmath_type<scalar_t>* __restrict__ out, int64_t K, bool cxcywh,
                                 at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[k] = acc_t(1) - iou_value<acc_t>(load_box(boxes1 + 4 * k, cxcywh), load_box(boxes2 + 4 * k, cxcywh), eps, true);
  }
}

template <typename scalar_t>
__global__ void giou_loss_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad,
                                          const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                          scalar_t* __restrict__ grad1, scalar_t* __restrict__ grad2, int64_t K,
                                          bool cxcywh, at::opmath_type<scalar_t> eps) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < K;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Box<acc_t> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
    iou_grad<acc_t>(load_box(boxes1 + 4 * k, cxcywh), load_box(boxes2 + 4 * k, cxcywh), eps, true, -grad[k], ga, gb);
    store_box(grad1 + 4 * k, corner_grad_to_format(ga, cxcywh));
    store_box(grad2 + 4 * k, corner_grad_to_format(gb, cxcywh));
  }
}

at::Tensor giou_loss_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format,
                          double eps) {
  const ElementwiseArgs args = prepare_elementwise(boxes1, boxes2, box_format, eps);
  if (args.K == 0) return args.out;
  const c10::cuda::CUDAGuard guard(boxes1.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "giou_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    giou_loss_kernel<scalar_t>
        <<<cuda::grid_stride_blocks(args.K, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            args.boxes1.const_data_ptr<scalar_t>(), args.boxes2.const_data_ptr<scalar_t>(),
            args.out.mutable_data_ptr<acc_t>(), args.K, args.cxcywh, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return args.out;
}

std::tuple<at::Tensor, at::Tensor> giou_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                           const at::Tensor& boxes2, c10::string_view box_format,
                                                           double eps) {
  const ElementwiseArgs args = prepare_elementwise_backward(grad, boxes1, boxes2, box_format, eps);
  if (args.K == 0) return {args.grad1, args.grad2};
  const c10::cuda::CUDAGuard guard(boxes1.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "giou_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    giou_loss_backward_kernel<scalar_t>
        <<<cuda::grid_stride_blocks(args.K, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            args.grad.const_data_ptr<acc_t>(), args.boxes1.const_data_ptr<scalar_t>(),
            args.boxes2.const_data_ptr<scalar_t>(), args.grad1.mutable_data_ptr<scalar_t>(),
            args.grad2.mutable_data_ptr<scalar_t>(), args.K, args.cxcywh, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {args.grad1, args.grad2};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("giou_loss", &giou_loss_cuda);
  m.impl("giou_loss_backward", &giou_loss_backward_cuda);
}

}  // namespace detr_ops::box
