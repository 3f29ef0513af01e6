// CPU kernels of detr_ops::pairwise_iou and its backward (schemas in ops/box_iou.cpp, math in
// ops/common/box_iou.h; the elementwise loss is in giou_loss_kernel.cpp).
//
// Pairwise: the second box set is first unpacked into corner arrays of the accumulation type
// (structure of arrays), so the inner loop over boxes2 is a straight, vectorisable sweep.
// Backward: grad of boxes1 is a reduction along each row (done in registers); grad of boxes2 is a
// reduction down each column, done per fixed chunk of rows into a private buffer and then summed in
// chunk order, so the result does not depend on the number of threads (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "ops/common/box_iou_checks.h"
#include "ops/common/box_iou.h"
#include "ops/cpu/cpu_isa.h"
#include "ops/cpu/parallel_tasks.h"

namespace detr_ops::box {
namespace {

// [n,4] boxes -> four corner arrays x0[n], y0[n], x1[n], y1[n] in acc_t.
template <typename scalar_t, typename acc_t>
void unpack_corners(const scalar_t* p, int64_t n, bool cxcywh, acc_t* out) {
  for (int64_t j = 0; j < n; ++j) {
    const Box<acc_t> c = make_box<acc_t>(p[4 * j], p[4 * j + 1], p[4 * j + 2], p[4 * j + 3], cxcywh);
    out[j] = c.x0;
    out[n + j] = c.y0;
    out[2 * n + j] = c.x1;
    out[3 * n + j] = c.y1;
  }
}

// The pair loops. Each is a straight loop over the corner arrays of boxes2 with no reduction in it,
// so it vectorises; each runs as an AVX2 or an SSE2 build of the same body (cpu_isa.h). Defined for
// float and double; half and bfloat16 compute in float.

// out[j] = iou(a, box j) for the m boxes in corner arrays c.
template <bool Generalized, typename acc_t>
DETR_HD void pair_row_body(Box<acc_t> a, const acc_t* __restrict__ c, int64_t m, acc_t* __restrict__ out) {
  const acc_t *__restrict__ x0 = c, *__restrict__ y0 = c + m, *__restrict__ x1 = c + 2 * m, *__restrict__ y1 = c + 3 * m;
  for (int64_t j = 0; j < m; ++j) {
    out[j] = iou_value<acc_t>(a, Box<acc_t>{x0[j], y0[j], x1[j], y1[j]}, acc_t(0), Generalized);
  }
}

// For box a against the m boxes (x0, y0, x1, y1)[j] with upstream gradients g[j]: the gradient of
// a from each pair goes to the scratch rows r* (summed by the caller, in order), the gradient of
// box j is added to the column buffers g*. Every array is its own __restrict__ parameter: g++
// honours restrict on parameters only, and with the outputs derived from two base pointers the
// loop needed more run-time alias checks than it allows, so it was not vectorised (30 -> 3 ns/pair).
template <bool Generalized, typename acc_t>
DETR_HD void pair_row_backward_loop(Box<acc_t> a, const acc_t* __restrict__ g, const acc_t* __restrict__ x0,
                                    const acc_t* __restrict__ y0, const acc_t* __restrict__ x1,
                                    const acc_t* __restrict__ y1, acc_t* __restrict__ gx0, acc_t* __restrict__ gy0,
                                    acc_t* __restrict__ gx1, acc_t* __restrict__ gy1, acc_t* __restrict__ rx0,
                                    acc_t* __restrict__ ry0, acc_t* __restrict__ rx1, acc_t* __restrict__ ry1,
                                    int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
    Box<acc_t> ga{0, 0, 0, 0}, gb{0, 0, 0, 0};
    iou_grad<acc_t>(a, Box<acc_t>{x0[j], y0[j], x1[j], y1[j]}, acc_t(0), Generalized, g[j], ga, gb);
    rx0[j] = ga.x0;
    ry0[j] = ga.y0;
    rx1[j] = ga.x1;
    ry1[j] = ga.y1;
    gx0[j] += gb.x0;
    gy0[j] += gb.y0;
    gx1[j] += gb.x1;
    gy1[j] += gb.y1;
  }
}

// The same with corner arrays c = [x0 | y0 | x1 | y1], column buffer pb and scratch ra laid out alike.
template <bool Generalized, typename acc_t>
DETR_HD void pair_row_backward_body(Box<acc_t> a, const acc_t* g, const acc_t* c, int64_t m, acc_t* pb, acc_t* ra) {
  pair_row_backward_loop<Generalized, acc_t>(a, g, c, c + m, c + 2 * m, c + 3 * m, pb, pb + m, pb + 2 * m, pb + 3 * m,
                                             ra, ra + m, ra + 2 * m, ra + 3 * m, m);
}

// The AVX2 or baseline build of each loop (cpu_isa.h).
template <bool G, typename acc_t>
void pair_row(Box<acc_t> a, const acc_t* c, int64_t m, acc_t* out) {
  cpu::isa_dispatch([=]() DETR_ISA_INLINE { pair_row_body<G, acc_t>(a, c, m, out); });
}
template <bool G, typename acc_t>
void pair_row_backward(Box<acc_t> a, const acc_t* g, const acc_t* c, int64_t m, acc_t* pb, acc_t* ra) {
  cpu::isa_dispatch([=]() DETR_ISA_INLINE { pair_row_backward_body<G, acc_t>(a, g, c, m, pb, ra); });
}

// One output row in the output dtype (through an acc_t scratch row for half and bfloat16).
template <bool Generalized, typename scalar_t, typename acc_t>
void pairwise_row(const Box<acc_t>& a, const acc_t* c, int64_t m, scalar_t* out, std::vector<acc_t>& scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    pair_row<Generalized, acc_t>(a, c, m, out);
  } else {
    scratch.resize(m);
    pair_row<Generalized, acc_t>(a, c, m, scratch.data());
    for (int64_t j = 0; j < m; ++j) out[j] = static_cast<scalar_t>(scratch[j]);
  }
}

// Rows [i0, i1) of one batch item: adds the column gradients into the private buffer pb (corner
// arrays of length m) and writes the row gradients of boxes1.
template <bool Generalized, typename scalar_t, typename acc_t>
void pairwise_backward_rows(const scalar_t* grad, const scalar_t* boxes1, const acc_t* c, int64_t i0, int64_t i1,
                            int64_t m, bool cxcywh, acc_t* pb, scalar_t* grad1) {
  std::vector<acc_t> ra(4 * m), g(std::is_same_v<scalar_t, acc_t> ? 0 : m);
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t* gi;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      gi = grad + i * m;
    } else {
      for (int64_t j = 0; j < m; ++j) g[j] = static_cast<acc_t>(grad[i * m + j]);
      gi = g.data();
    }
    pair_row_backward<Generalized, acc_t>(load_box(boxes1 + 4 * i, cxcywh), gi, c, m, pb, ra.data());
    Box<acc_t> sa{0, 0, 0, 0};
    for (int64_t j = 0; j < m; ++j) {
      sa.x0 += ra[j];
      sa.y0 += ra[m + j];
      sa.x1 += ra[2 * m + j];
      sa.y1 += ra[3 * m + j];
    }
    store_box(grad1 + 4 * i, corner_grad_to_format(sa, cxcywh));
  }
}

at::Tensor pairwise_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format,
                            bool generalized) {
  const PairwiseArgs args = prepare_pairwise(boxes1, boxes2, box_format);
  if (args.empty()) return args.result();
  const int64_t B = args.B, N = args.N, M = args.M;
  const bool cxcywh = args.cxcywh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "pairwise_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> corners(B * 4 * M);
    const scalar_t* p1 = args.boxes1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = args.boxes2.const_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) unpack_corners(p2 + b * M * 4, M, cxcywh, corners.data() + b * 4 * M);
    scalar_t* po = args.out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / M);
    cpu::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch;
      for (int64_t r = begin; r < end; ++r) {
        const Box<acc_t> a = load_box(p1 + 4 * r, cxcywh);
        const acc_t* c = corners.data() + (r / N) * 4 * M;
        if (generalized) {
          pairwise_row<true>(a, c, M, po + r * M, scratch);
        } else {
          pairwise_row<false>(a, c, M, po + r * M, scratch);
        }
      }
    });
  });
  return args.result();
}

std::tuple<at::Tensor, at::Tensor> pairwise_iou_backward_cpu(const at::Tensor& grad, const at::Tensor& boxes1,
                                                             const at::Tensor& boxes2, c10::string_view box_format,
                                                             bool generalized) {
  const PairwiseArgs args = prepare_pairwise_backward(grad, boxes1, boxes2, box_format);
  if (args.empty()) return args.grads();
  const int64_t B = args.B, N = args.N, M = args.M;
  const bool cxcywh = args.cxcywh;

  // Fixed row chunks (a function of N only) so the column sums are always added in the same order.
  const int64_t rows_per_chunk = std::max<int64_t>(64, (N + 15) / 16);
  const int64_t C = (N + rows_per_chunk - 1) / rows_per_chunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes1.scalar_type(), "pairwise_iou_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> corners(B * 4 * M);
    std::vector<acc_t> partial(B * C * 4 * M, acc_t(0));
    const scalar_t* p1 = args.boxes1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = args.boxes2.const_data_ptr<scalar_t>();
    const scalar_t* pg = args.grad.const_data_ptr<scalar_t>();
    scalar_t* pg1 = args.grad1.mutable_data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) unpack_corners(p2 + b * M * 4, M, cxcywh, corners.data() + b * 4 * M);
    cpu::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / C, c = task % C;
        const int64_t i0 = c * rows_per_chunk, i1 = std::min(N, i0 + rows_per_chunk);
        const int64_t off = b * N;
        auto run = [&](auto generalized_tag) {
          pairwise_backward_rows<decltype(generalized_tag)::value>(
              pg + off * M, p1 + off * 4, corners.data() + b * 4 * M, i0, i1, M, cxcywh, partial.data() + task * 4 * M,
              pg1 + off * 4);
        };
        if (generalized) {
          run(std::true_type{});
        } else {
          run(std::false_type{});
        }
      }
    });
    scalar_t* pg2 = args.grad2.mutable_data_ptr<scalar_t>();
    cpu::parallel_for(0, B * M, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / M, j = r % M;
        Box<acc_t> s{0, 0, 0, 0};
        for (int64_t c = 0; c < C; ++c) {
          const acc_t* pb = partial.data() + (b * C + c) * 4 * M;
          s.x0 += pb[j];
          s.y0 += pb[M + j];
          s.x1 += pb[2 * M + j];
          s.y1 += pb[3 * M + j];
        }
        store_box(pg2 + 4 * r, corner_grad_to_format(s, cxcywh));
      }
    });
  });
  return args.grads();
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("pairwise_iou", &pairwise_iou_cpu);
  m.impl("pairwise_iou_backward", &pairwise_iou_backward_cpu);
}

}  // namespace detr_ops::box
