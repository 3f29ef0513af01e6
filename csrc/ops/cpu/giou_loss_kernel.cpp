// CPU kernels of the elementwise GIoU loss, detr_ops::giou_loss and its backward (schemas in
// ops/giou_loss.cpp, math in ops/common/box_iou.h).
//
// Boxes are stored [K, 4] (array of structures), which g++ cannot vectorise: every lane would need a
// gather. So the pairs go in blocks of kBlock: a block's corners are unpacked into arrays
// x0[], y0[], ... (structure of arrays), the GIoU math runs as a straight loop over those arrays
// (vectorised, built for AVX2 and SSE2 like the pairwise loops, cpu_isa.h), and the results are
// packed back. Pairs are independent, so any split over threads gives the same numbers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "ops/common/box_iou_checks.h"
#include "ops/common/box_iou.h"
#include "ops/cpu/cpu_isa.h"
#include "ops/cpu/parallel_tasks.h"

namespace detr_ops::box {
namespace {

constexpr int64_t kBlock = 128;  // pairs per block: 16 arrays of kBlock doubles = 16 KiB of stack

// out[j] = 1 - giou(a_j, b_j). Every array is its own __restrict__ parameter (g++ honours restrict
// on parameters only; see the pairwise loops).
template <typename acc_t>
DETR_HD void loss_loop(const acc_t* __restrict__ ax0, const acc_t* __restrict__ ay0, const acc_t* __restrict__ ax1,
                       const acc_t* __restrict__ ay1, const acc_t* __restrict__ bx0, const acc_t* __restrict__ by0,
                       const acc_t* __restrict__ bx1, const acc_t* __restrict__ by1, acc_t eps,
                       acc_t* __restrict__ out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = acc_t(1) - iou_value<acc_t>(Box<acc_t>{ax0[j], ay0[j], ax1[j], ay1[j]},
                                         Box<acc_t>{bx0[j], by0[j], bx1[j], by1[j]}, eps, true);
  }
}

// Corner gradients of the loss 1 - giou(a_j, b_j) for upstream gradients g[j].
template <typename acc_t>
DETR_HD void loss_backward_loop(const acc_t* __restrict__ g, const acc_t* __restrict__ ax0,
                                const acc_t* __restrict__ ay0, const acc_t* __restrict__ ax1,
                                const acc_t* __restrict__ ay1, const acc_t* __restrict__ bx0,
                                const acc_t* __restrict__ by0, const acc_t* __restrict__ bx1,
                                const acc_t* __restrict__ by1, acc_t eps, acc_t* __restrict__ gax0,
                                acc_t* __restrict__ gay0, acc_t* __restrict__ gax1, acc_t* __restrict__ gay1,
                                acc_t* __restrict__ gbx0, acc_t* __restrict__ gby0, acc_t* __restrict__ gbx1,
                                acc_t* __restrict__ gby1, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    Box<acc_t> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
    iou_grad<acc_t>(Box<acc_t>{ax0[j], ay0[j], ax1[j], ay1[j]}, Box<acc_t>{bx0[j], by0[j], bx1[j], by1[j]}, eps, true,
                    -g[j], ga, gb);
    gax0[j] = ga.x0;
    gay0[j] = ga.y0;
    gax1[j] = ga.x1;
    gay1[j] = ga.y1;
    gbx0[j] = gb.x0;
    gby0[j] = gb.y0;
    gbx1[j] = gb.x1;
    gby1[j] = gb.y1;
  }
}

// The two loops over one block in structure-of-arrays scratch s: rows 0-3 boxes1's corners,
// 4-7 boxes2's, 8 the upstream gradient (backward); the backward writes the corner gradients to
// the 8 rows of grads in the same order.
template <typename acc_t>
DETR_HD void loss_block_body(acc_t* s, acc_t eps, acc_t* out, int64_t n) {
  const int64_t B = kBlock;
  loss_loop<acc_t>(s, s + B, s + 2 * B, s + 3 * B, s + 4 * B, s + 5 * B, s + 6 * B, s + 7 * B, eps, out, n);
}
template <typename acc_t>
DETR_HD void loss_backward_block_body(acc_t* s, acc_t eps, acc_t* grads, int64_t n) {
  const int64_t B = kBlock;
  loss_backward_loop<acc_t>(s + 8 * B, s, s + B, s + 2 * B, s + 3 * B, s + 4 * B, s + 5 * B, s + 6 * B, s + 7 * B,
                            eps, grads, grads + B, grads + 2 * B, grads + 3 * B, grads + 4 * B, grads + 5 * B,
                            grads + 6 * B, grads + 7 * B, n);
}

// The AVX2 or baseline build of each (cpu_isa.h).
template <typename acc_t>
void loss_block(acc_t* s, acc_t eps, acc_t* out, int64_t n) {
  cpu::isa_dispatch([=]() DETR_ISA_INLINE { loss_block_body<acc_t>(s, eps, out, n); });
}
template <typename acc_t>
void loss_backward_block(acc_t* s, acc_t eps, acc_t* grads, int64_t n) {
  cpu::isa_dispatch([=]() DETR_ISA_INLINE { loss_backward_block_body<acc_t>(s, eps, grads, n); });
}

// Unpacks pairs [k0, k0 + n) into rows 0-7 of the block scratch s.
template <typename scalar_t, typename acc_t>
void unpack_pairs(const scalar_t* p1, const scalar_t* p2, int64_t k0, int64_t n, bool cxcywh, acc_t* s) {
  for (int64_t j = 0; j < n; ++j) {
    const Box<acc_t> a = load_box(p1 + 4 * (k0 + j), cxcywh), b = load_box(p2 + 4 * (k0 + j), cxcywh);
    s[j] = a.x0;
    s[kBlock + j] = a.y0;
    s[2 * kBlock + j] = a.x1;
    s[3 * kBlock + j] = a.y1;
    s[4 * kBlock + j] = b.x0;
    s[5 * kBlock + j] = b.y0;
    s[6 * kBlock + j] = b.x1;
    s[7 * kBlock + j] = b.y1;
  }
}

at::Tensor giou_loss_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format,
                         double eps) {
  const ElementwiseArgs args = prepare_elementwise(boxes1, boxes2, box_format, eps);
  const int64_t K = args.K;
  const bool cxcywh = args.cxcywh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "giou_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = args.boxes1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = args.boxes2.const_data_ptr<scalar_t>();
    acc_t* po = args.out.mutable_data_ptr<acc_t>();
    const acc_t e = static_cast<acc_t>(eps);
    cpu::parallel_for(0, (K + kBlock - 1) / kBlock, 64, [&](int64_t begin, int64_t end) {
      acc_t s[8 * kBlock];
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t k0 = blk * kBlock, n = std::min(kBlock, K - k0);
        unpack_pairs(p1, p2, k0, n, cxcywh, s);
        loss_block<acc_t>(s, e, po + k0, n);
      }
    });
  });
  return args.out;
}

std::tuple<at::Tensor, at::Tensor> giou_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes1,
                                                          const at::Tensor& boxes2, c10::string_view box_format,
                                                          double eps) {
  const ElementwiseArgs args = prepare_elementwise_backward(grad, boxes1, boxes2, box_format, eps);
  const int64_t K = args.K;
  const bool cxcywh = args.cxcywh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "giou_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p1 = args.boxes1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = args.boxes2.const_data_ptr<scalar_t>();
    const acc_t* pg = args.grad.const_data_ptr<acc_t>();
    scalar_t* pg1 = args.grad1.mutable_data_ptr<scalar_t>();
    scalar_t* pg2 = args.grad2.mutable_data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    cpu::parallel_for(0, (K + kBlock - 1) / kBlock, 64, [&](int64_t begin, int64_t end) {
      acc_t s[9 * kBlock], grads[8 * kBlock];
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t k0 = blk * kBlock, n = std::min(kBlock, K - k0);
        unpack_pairs(p1, p2, k0, n, cxcywh, s);
        std::copy(pg + k0, pg + k0 + n, s + 8 * kBlock);
        loss_backward_block<acc_t>(s, e, grads, n);
        for (int64_t j = 0; j < n; ++j) {
          const acc_t* q = grads + j;
          store_box(pg1 + 4 * (k0 + j), corner_grad_to_format(Box<acc_t>{q[0], q[kBlock], q[2 * kBlock], q[3 * kBlock]},
                                                              cxcywh));
          store_box(pg2 + 4 * (k0 + j), corner_grad_to_format(Box<acc_t>{q[4 * kBlock], q[5 * kBlock], q[6 * kBlock],
                                                                         q[7 * kBlock]},
                                                              cxcywh));
        }
      }
    });
  });
  return {args.grad1, args.grad2};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("giou_loss", &giou_loss_cpu);
  m.impl("giou_loss_backward", &giou_loss_backward_cpu);
}

}  // namespace detr_ops::box
