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

namespace detr_ops::box {
namespace {

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

unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>(std::min<int64_t>((n + threads - 1) / threads, 65535LL * 32));
}

at::Tensor giou_loss_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format,
                          double eps) {
  check_elementwise(boxes1, boxes2);
  const bool cxcywh = parse_box_format(box_format);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  const int64_t K = b1.numel() / 4;
  at::Tensor out = at::empty(boxes1.sizes().slice(0, boxes1.dim() - 1),
                             b1.options().dtype(at::toOpMathType(b1.scalar_type())));
  if (K == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "giou_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    giou_loss_kernel<scalar_t><<<blocks_for(K, 256), 256, 0, stream>>>(
        b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(), K, cxcywh,
        static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> giou_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& boxes1,
                                                           const at::Tensor& boxes2, c10::string_view box_format,
                                                           double eps) {
  check_elementwise(boxes1, boxes2);
  check_grad(grad, boxes1.sizes().slice(0, boxes1.dim() - 1), boxes1);
  const bool cxcywh = parse_box_format(box_format);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  const at::Tensor g = grad.to(at::toOpMathType(b1.scalar_type())).contiguous();
  at::Tensor grad1 = at::empty_like(b1), grad2 = at::empty_like(b2);
  const int64_t K = b1.numel() / 4;
  if (K == 0) return {grad1, grad2};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "giou_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    giou_loss_backward_kernel<scalar_t><<<blocks_for(K, 256), 256, 0, stream>>>(
        g.const_data_ptr<acc_t>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(),
        grad1.mutable_data_ptr<scalar_t>(), grad2.mutable_data_ptr<scalar_t>(), K, cxcywh, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad1, grad2};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CUDA, m) {
  m.impl("giou_loss", &giou_loss_cuda);
  m.impl("giou_loss_backward", &giou_loss_backward_cuda);
}

}  // namespace detr_ops::box
