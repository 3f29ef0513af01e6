// CPU kernels of multi-scale deformable attention (schemas in ops/ms_deform_attn.cpp, sampling
// math in ops/common/ms_deform_attn.h, the loops over a head's D channels in
// ms_deform_attn_rows.h).
//
// Layout: value [N, S, M, D] keeps a head's D channels contiguous, so each bilinear corner is one
// contiguous row of D numbers; the corner weights of a sampling point are computed once and the
// inner loops run over D (vectorised; D = 32 and 64 are compiled at fixed width).
//
// Forward: tasks are chunks of (batch x query); each query accumulates its M*D outputs in a
// private buffer of the accumulation type.
//
// The K sampling points of each (n, q, m) are consecutive, level by level (Points: P per level for
// ms_deform_attn, num_points_list[l] for ms_deform_attn_points); both ops run the same loops.
//
// Backward: see backward() below.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>
#include <type_traits>
#include <vector>

#include "ops/common/ms_deform_attn.h"
#include "ops/common/ms_deform_attn_checks.h"
#include "ops/cpu/cpu_isa.h"  // DETR_CPU_CLONES: the hot loops run as AVX2+FMA builds where the CPU has it
#include "ops/cpu/ms_deform_attn_rows.h"
#include "ops/cpu/parallel_tasks.h"


namespace detr_ops::msda {
namespace {

struct Levels {
  std::vector<int64_t> H, W, start;
  std::vector<bool> ok;
  bool tiled;  // the levels are disjoint and cover value's S rows in order (what Python validates)
  Points points;
};

Levels read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S,
                   Points points) {
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const int64_t L = shapes.size(0);
  const int64_t* ps = shapes.const_data_ptr<int64_t>();
  const int64_t* pl = starts.const_data_ptr<int64_t>();
  Levels lv{std::vector<int64_t>(L), std::vector<int64_t>(L), std::vector<int64_t>(L), std::vector<bool>(L), true,
            std::move(points)};
  int64_t next = 0;
  for (int64_t l = 0; l < L; ++l) {
    lv.H[l] = ps[2 * l];
    lv.W[l] = ps[2 * l + 1];
    lv.start[l] = pl[l];
    lv.ok[l] = level_in_bounds(lv.start[l], lv.H[l], lv.W[l], S);
    lv.tiled = lv.tiled && lv.ok[l] && lv.start[l] == next;
    if (lv.ok[l]) next = lv.start[l] + lv.H[l] * lv.W[l];  // <= S: the level is in bounds
  }
  lv.tiled = lv.tiled && next == S;
  return lv;
}

// Adds one sampling point (attention weight a) of a level into acc; base is the level's first row
// of the head, rows row_stride apart.
template <int kD, typename acc_t, typename src_t>
inline void sample_point(acc_t* acc, const src_t* base, int64_t row_stride, const Bilinear<acc_t>& b, acc_t a,
                         int64_t D) {
  if (b.pixel[0] >= 0 && b.pixel[1] >= 0 && b.pixel[2] >= 0 && b.pixel[3] >= 0) {
    axpy_rows4<kD>(acc, base + b.pixel[0] * row_stride, base + b.pixel[1] * row_stride,
                   base + b.pixel[2] * row_stride, base + b.pixel[3] * row_stride, a * b.weight[0],
                   a * b.weight[1], a * b.weight[2], a * b.weight[3], D);
    return;
  }
  for (int c = 0; c < 4; ++c) {
    if (b.pixel[c] >= 0) axpy_row<kD>(acc, base + b.pixel[c] * row_stride, a * b.weight[c], D);
  }
}

// Forward of the flattened (batch x query) range [begin, end): all heads, levels and points.
// acc holds D numbers of the accumulation type.
template <typename scalar_t, int kD>
DETR_CPU_CLONES void forward_queries(const Sizes& s, const Levels& lv, const scalar_t* pv, const scalar_t* ploc,
                                      const scalar_t* pa, scalar_t* po, int64_t begin, int64_t end,
                                      at::opmath_type<scalar_t>* acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = head_dim<kD>(s.D), MD = s.M * D;
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / s.Lq;
    for (int64_t m = 0; m < s.M; ++m) {
      std::fill(acc, acc + D, acc_t(0));
      const int64_t point0 = (nq * s.M + m) * s.K;  // index of (n, q, m, point 0)
      for (int64_t l = 0; l < s.L; ++l) {
        if (!lv.ok[l]) continue;
        const scalar_t* base = pv + ((n * s.S + lv.start[l]) * s.M + m) * D;
        for (int64_t k = point0 + lv.points.begin[l]; k < point0 + lv.points.begin[l + 1]; ++k) {
          const Bilinear<acc_t> b = bilinear<acc_t>(ploc[2 * k], ploc[2 * k + 1], lv.H[l], lv.W[l]);
          if (b.any) sample_point<kD>(acc, base, MD, b, static_cast<acc_t>(pa[k]), D);
        }
      }
      scalar_t* o = po + nq * MD + m * D;
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d]);
    }
  }
}

// One backward task: head m of image n, levels [l_begin, l_end), whose value rows are
// [row_begin, row_end). It writes the gradients of those levels' points and those rows of
// grad_value, which no other task touches.
//
// A level is handled in one of two ways (in_place[l], chosen per call):
// * Buffered (levels sampled about once per pixel or more: encoders, decoders' small levels): its
//   value rows are copied into a dense buffer next to their gradients (row r: value in
//   buf[2Dr, 2Dr + D), grad_value in buf[2Dr + D, 2Dr + 2D)), the points accumulate there, and the
//   gradient rows are written out once at the end. In place, a head's rows lie M*D elements apart
//   (1 KiB for M*D = 256 floats), a power-of-two stride that maps them onto a sixteenth of the cache
//   sets, and a corner's value row would sit at the same page offset as its gradient row (4K
//   aliasing between the load and the store).
// * In place (levels with fewer samples than pixels, such as a decoder's largest levels; float and
//   double only, as half-precision sums need the float buffer): the points read value and add into
//   the zero-initialised grad_value where they are, so no pass over all of the level's rows is made.
template <typename scalar_t, int kD>
DETR_CPU_CLONES void backward_task(const Sizes& s, const Levels& lv, const std::vector<char>& in_place,
                                    const scalar_t* pv, const scalar_t* ploc, const scalar_t* pa, const scalar_t* pg,
                                    scalar_t* pgv, scalar_t* pgl, scalar_t* pga, int64_t n, int64_t m,
                                    int64_t l_begin, int64_t l_end, int64_t row_begin, int64_t row_end,
                                    cpu::ScratchArray<at::opmath_type<scalar_t>>& scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = head_dim<kD>(s.D), D2 = 2 * D, MD = s.M * D;
  const int64_t row0 = (n * s.S + row_begin) * s.M + m;  // value row of (n, row_begin, m)
  // The buffered rows, as ranges of [0, row_end - row_begin): all of them when no level is in
  // place (which also covers levels that overlap or leave rows out, when unvalidated), else the
  // buffered levels' (the levels then tile value).
  std::vector<std::pair<int64_t, int64_t>> ranges;
  bool any_in_place = false;
  for (int64_t l = l_begin; l < l_end; ++l) any_in_place = any_in_place || in_place[l];
  if (!any_in_place) {
    ranges.emplace_back(0, row_end - row_begin);
  } else {
    for (int64_t l = l_begin; l < l_end; ++l) {
      if (!in_place[l]) ranges.emplace_back(lv.start[l] - row_begin, lv.start[l] - row_begin + lv.H[l] * lv.W[l]);
    }
  }
  acc_t* buf = scratch.get((row_end - row_begin) * D2);
  for (const auto& [r0, r1] : ranges) {
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* src = pv + (row0 + r * s.M) * D;
      acc_t* dst = buf + r * D2;
      // One loop for both halves: a separate zero loop becomes a `rep stos` per row, whose
      // start-up cost is that of the whole row.
      for (int64_t d = 0; d < D; ++d) {
        dst[d] = static_cast<acc_t>(src[d]);
        dst[D + d] = acc_t(0);
      }
    }
  }
  std::vector<acc_t> grad(D);
  for (int64_t q = 0; q < s.Lq; ++q) {
    const scalar_t* gq = pg + ((n * s.Lq + q) * s.M + m) * D;
    for (int64_t d = 0; d < D; ++d) grad[d] = static_cast<acc_t>(gq[d]);
    for (int64_t l = l_begin; l < l_end; ++l) {
      const int64_t point0 = ((n * s.Lq + q) * s.M + m) * s.K + lv.points.begin[l];  // the level's first point
      const int64_t count = lv.points.count(l);
      if (!lv.ok[l]) {  // zero gradients, as its (skipped) forward contribution
        for (int64_t k = point0; k < point0 + count; ++k) pga[k] = pgl[2 * k] = pgl[2 * k + 1] = scalar_t(0);
        continue;
      }
      const int64_t H = lv.H[l], W = lv.W[l];
      const bool direct = in_place[l];
      acc_t* level = buf + (lv.start[l] - row_begin) * D2;
      const int64_t level_row0 = (row0 + (lv.start[l] - row_begin) * s.M) * D;  // element offset in value
      for (int64_t k = point0; k < point0 + count; ++k) {
        const Bilinear<acc_t> b = bilinear<acc_t>(ploc[2 * k], ploc[2 * k + 1], H, W);
        if (!b.any) {
          pga[k] = pgl[2 * k] = pgl[2 * k + 1] = scalar_t(0);
          continue;
        }
        const acc_t a = static_cast<acc_t>(pa[k]);
        auto corner = [&](int c) -> acc_t {  // <grad, value row>, and grad_value row += a * w_c * grad
          if (b.pixel[c] < 0) return acc_t(0);
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            if (direct) {
              const int64_t off = level_row0 + b.pixel[c] * MD;
              return corner_backward<kD>(grad.data(), pv + off, pgv + off, a * b.weight[c], D);
            }
          }
          acc_t* row = level + b.pixel[c] * D2;
          return corner_backward<kD>(grad.data(), row, row + D, a * b.weight[c], D);
        };
        // Four named sums rather than an array: g++ otherwise stores them one by one and reloads
        // them in pairs for its vectorised pixel_grad, a store-forwarding stall per point.
        const acc_t dot0 = corner(0), dot1 = corner(1), dot2 = corner(2), dot3 = corner(3);
        acc_t gx, gy;
        pixel_grad(b, dot0, dot1, dot2, dot3, gx, gy);
        pga[k] = static_cast<scalar_t>(b.weight[0] * dot0 + b.weight[1] * dot1 + b.weight[2] * dot2 +
                                       b.weight[3] * dot3);
        pgl[2 * k] = static_cast<scalar_t>(a * gx * static_cast<acc_t>(W));
        pgl[2 * k + 1] = static_cast<scalar_t>(a * gy * static_cast<acc_t>(H));
      }
    }
  }
  for (const auto& [r0, r1] : ranges) {
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* dst = pgv + (row0 + r * s.M) * D;
      const acc_t* src = buf + r * D2 + D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(src[d]);
    }
  }
}

// Calls f(std::integral_constant<int, kD>) with kD = D for the head dims compiled in fixed width.
template <typename F>
void dispatch_head_dim(int64_t D, F&& f) {
  if (D == 32) {
    f(std::integral_constant<int, 32>{});
  } else if (D == 64) {
    f(std::integral_constant<int, 64>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

at::Tensor forward(const Sizes& s, Points points, const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  at::Tensor out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());  // every element is written
  if (out.numel() == 0) return out;
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.S, std::move(points));
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  // Tasks of about 64K multiply-adds: small enough to balance, large enough to amortise a task
  // (estimated in double: the product of the sizes need not fit int64 for an expanded input).
  const double work_per_query = std::max(1.0, static_cast<double>(s.M) * s.K * 4 * s.D);
  const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(65536 / work_per_query));
  const int64_t num_tasks = (s.N * s.Lq + grain - 1) / grain;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    const scalar_t* ploc = loc.const_data_ptr<scalar_t>();
    const scalar_t* pa = attn.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    dispatch_head_dim(s.D, [&](auto kD) {
      cpu::parallel_tasks<std::vector<acc_t>>(num_tasks, [&](int64_t task, std::vector<acc_t>& acc) {
        acc.resize(s.D);
        const int64_t begin = task * grain, end = std::min(s.N * s.Lq, begin + grain);
        forward_queries<scalar_t, kD>(s, lv, pv, ploc, pa, po, begin, end, acc.data());
      });
    });
  });
  return out;
}

// Backward: grad_value is a scatter (many points hit the same pixel). Instead of atomics or
// per-thread copies of grad_value, the work is split into tasks (batch n, head m): the rows a task
// writes, grad_value[n, :, m, :], belong to no other task, and inside a task the queries are
// visited in a fixed order. So the backward is race-free and bitwise deterministic for any thread
// count, and a task reads each query's K locations and weights as one contiguous block. Where
// N*M tasks would leave threads idle (a small batch on many cores) and the levels tile value, the
// tasks are (n, m, level) instead, whose rows are disjoint too.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const Sizes& s, Points points, const at::Tensor& grad_output,
                                                        const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                        const at::Tensor& level_start_index,
                                                        const at::Tensor& sampling_locations,
                                                        const at::Tensor& attention_weights) {
  check_grad_output(grad_output, s, value);
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.S, std::move(points));
  const bool empty = s.N == 0 || s.Lq == 0 || s.M == 0 || s.K == 0 || s.D == 0;
  // Levels whose points are added into grad_value in place (see backward_task): fewer corner
  // samples (4 per point) than pixels, when the levels tile value; float and double only. Measured
  // on 2 threads: the full-size Deformable DETR decoder's backward (Lq 300, largest level 100x167)
  // takes 18 ms instead of 29 ms; the CPU decoder shape (64x64 largest) is unchanged (2.9 ms).
  std::vector<char> in_place(s.L, 0);
  bool any_in_place = false;
  if (!empty && lv.tiled && at::toOpMathType(value.scalar_type()) == value.scalar_type()) {
    for (int64_t l = 0; l < s.L; ++l) {
      // Lq * count * 4 <= N * Lq * M * K * 4 fits int64 (check_inputs); H * W <= S (tiled).
      in_place[l] = s.Lq * lv.points.count(l) * 4 < lv.H[l] * lv.W[l];
      any_in_place = any_in_place || in_place[l];
    }
  }
  // Every element of the three gradients is written by exactly one task (grad_value's rows of
  // in-place levels are added into, from zero).
  at::Tensor grad_value = any_in_place ? at::zeros(value.sizes(), value.options()) : at::empty(value.sizes(), value.options());
  at::Tensor grad_loc = at::empty(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_attn = at::empty(attention_weights.sizes(), attention_weights.options());
  if (empty) return {grad_value.zero_(), grad_loc.zero_(), grad_attn.zero_()};
  const int64_t level_groups = (lv.tiled && s.N * s.M < 2 * at::get_num_threads()) ? s.L : 1;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  const at::Tensor g = grad_output.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    const scalar_t* ploc = loc.const_data_ptr<scalar_t>();
    const scalar_t* pa = attn.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    scalar_t* pgv = grad_value.mutable_data_ptr<scalar_t>();
    scalar_t* pgl = grad_loc.mutable_data_ptr<scalar_t>();
    scalar_t* pga = grad_attn.mutable_data_ptr<scalar_t>();
    auto run = [&](auto kD) {
      cpu::parallel_tasks<cpu::ScratchArray<acc_t>>(s.N * s.M * level_groups, [&](int64_t task,
                                                                                  cpu::ScratchArray<acc_t>& buf) {
        const int64_t n = task / (s.M * level_groups), m = (task / level_groups) % s.M;
        if (level_groups == 1) {
          backward_task<scalar_t, kD>(s, lv, in_place, pv, ploc, pa, pg, pgv, pgl, pga, n, m, 0, s.L, 0, s.S, buf);
        } else {
          const int64_t l = task % level_groups;
          backward_task<scalar_t, kD>(s, lv, in_place, pv, ploc, pa, pg, pgv, pgl, pga, n, m, l, l + 1, lv.start[l],
                                               lv.start[l] + lv.H[l] * lv.W[l], buf);
        }
      });
    };
    dispatch_head_dim(s.D, run);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  using Checked = Entries<forward, backward>;
  m.impl("ms_deform_attn", &Checked::ms_deform_attn);
  m.impl("ms_deform_attn_backward", &Checked::ms_deform_attn_backward);
  m.impl("ms_deform_attn_points", &Checked::ms_deform_attn_points);
  m.impl("ms_deform_attn_points_backward", &Checked::ms_deform_attn_points_backward);
}

}  // namespace detr_ops::msda
