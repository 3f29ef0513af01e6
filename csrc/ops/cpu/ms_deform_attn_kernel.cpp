// CPU kernels of multi-scale deformable attention (schemas in ops/ms_deform_attn.cpp, sampling
// math in ops/common/ms_deform_attn.h).
//
// Layout: value [N, S, M, D] keeps a head's D channels contiguous, so each bilinear corner is one
// contiguous row of D numbers; the corner weights of a sampling point are computed once and the
// inner loops run over D (vectorisable).
//
// Forward: parallel over batch x queries; each query accumulates its M*D outputs in a private
// buffer of the accumulation type.
//
// Backward: grad_value is a scatter (many queries hit the same pixel). Instead of atomics or
// per-thread copies of grad_value, the work is split into tasks (batch n, head m, level l): the
// pixels a task writes, grad_value[n, level l rows, m, :], belong to no other task, and inside a
// task the queries are visited in a fixed order. So the backward is race-free and bitwise
// deterministic for any thread count, needs no extra memory, and still has N*M*L parallel tasks
// (64 for a batch of 2 with 8 heads and 4 levels), each of equal work (Lq*P points).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/common/ms_deform_attn.h"
#include "ops/common/ms_deform_attn_checks.h"
#include "ops/cpu/cpu_isa.h"  // DETR_CPU_CLONES: the hot loops run as AVX2+FMA builds where the CPU has it


namespace detr_ops::msda {
namespace {

// Independent partial sums of a dot product: a single running sum is a serial dependency chain the
// compiler may not reorder (no -ffast-math); kLanes fixed partial sums, added in a fixed order,
// vectorise and stay deterministic.
constexpr int kLanes = 8;

// Returns <g, r> over D channels and adds w * g into gr.
template <typename scalar_t, typename acc_t>
inline acc_t dot_and_axpy(const acc_t* __restrict__ g, const scalar_t* __restrict__ r, acc_t* __restrict__ gr, acc_t w,
                          int64_t D) {
  acc_t part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      part[j] += g[d + j] * static_cast<acc_t>(r[d + j]);
      gr[d + j] += w * g[d + j];
    }
  }
  acc_t sum = acc_t(0);
  for (; d < D; ++d) {
    sum += g[d] * static_cast<acc_t>(r[d]);
    gr[d] += w * g[d];
  }
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

// acc[d] += sum over on-map corners of weight[c] * row_c[d].
template <typename scalar_t, typename acc_t>
inline void accumulate_point(acc_t* __restrict__ acc, const scalar_t* __restrict__ base, int64_t row_stride, const Bilinear<acc_t>& b, acc_t a,
                             int64_t D) {
  if (b.pixel[0] >= 0 && b.pixel[1] >= 0 && b.pixel[2] >= 0 && b.pixel[3] >= 0) {
    // Interior point, the common case: one fused sweep over the four rows.
    const scalar_t* r0 = base + b.pixel[0] * row_stride;
    const scalar_t* r1 = base + b.pixel[1] * row_stride;
    const scalar_t* r2 = base + b.pixel[2] * row_stride;
    const scalar_t* r3 = base + b.pixel[3] * row_stride;
    const acc_t w0 = a * b.weight[0], w1 = a * b.weight[1], w2 = a * b.weight[2], w3 = a * b.weight[3];
    for (int64_t d = 0; d < D; ++d) {
      acc[d] += w0 * static_cast<acc_t>(r0[d]) + w1 * static_cast<acc_t>(r1[d]) + w2 * static_cast<acc_t>(r2[d]) +
                w3 * static_cast<acc_t>(r3[d]);
    }
    return;
  }
  for (int c = 0; c < 4; ++c) {
    if (b.pixel[c] < 0) continue;
    const scalar_t* r = base + b.pixel[c] * row_stride;
    const acc_t w = a * b.weight[c];
    for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<acc_t>(r[d]);
  }
}

struct Levels {
  std::vector<int64_t> H, W, start;
  std::vector<bool> ok;
};

Levels read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index, int64_t S) {
  const at::Tensor shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  const int64_t L = shapes.size(0);
  const int64_t* ps = shapes.const_data_ptr<int64_t>();
  const int64_t* pl = starts.const_data_ptr<int64_t>();
  Levels lv{std::vector<int64_t>(L), std::vector<int64_t>(L), std::vector<int64_t>(L), std::vector<bool>(L)};
  for (int64_t l = 0; l < L; ++l) {
    lv.H[l] = ps[2 * l];
    lv.W[l] = ps[2 * l + 1];
    lv.start[l] = pl[l];
    lv.ok[l] = level_in_bounds(lv.start[l], lv.H[l], lv.W[l], S);
  }
  return lv;
}

// Queries [begin, end) of the flattened batch x queries: all heads, levels and points.
template <typename scalar_t>
DETR_CPU_CLONES void forward_range(const Sizes& s, const Levels& lv, const scalar_t* pv, const scalar_t* ploc,
                                    const scalar_t* pa, scalar_t* po, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t MD = s.M * s.D;
  std::vector<acc_t> acc(s.D);
  for (int64_t nq = begin; nq < end; ++nq) {
    const int64_t n = nq / s.Lq;
    for (int64_t m = 0; m < s.M; ++m) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t point0 = (nq * s.M + m) * s.L * s.P;  // index of (n, q, m, l=0, p=0)
      for (int64_t l = 0; l < s.L; ++l) {
        if (!lv.ok[l]) continue;
        const scalar_t* base = pv + ((n * s.S + lv.start[l]) * s.M + m) * s.D;
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t k = point0 + l * s.P + p;
          const Bilinear<acc_t> b = bilinear<acc_t>(ploc[2 * k], ploc[2 * k + 1], lv.H[l], lv.W[l]);
          if (!b.any) continue;
          accumulate_point(acc.data(), base, MD, b, static_cast<acc_t>(pa[k]), s.D);
        }
      }
      scalar_t* o = po + nq * MD + m * s.D;
      for (int64_t d = 0; d < s.D; ++d) o[d] = static_cast<scalar_t>(acc[d]);
    }
  }
}

// Backward tasks [begin, end) of the (batch, head, level) split described at the top.
template <typename scalar_t>
DETR_CPU_CLONES void backward_tasks(const Sizes& s, const Levels& lv, const scalar_t* pv, const scalar_t* ploc,
                                     const scalar_t* pa, const scalar_t* pg, at::opmath_type<scalar_t>* pgv,
                                     scalar_t* pgl, scalar_t* pga, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t MD = s.M * s.D;
  std::vector<acc_t> gbuf(s.D);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t l = task % s.L, m = (task / s.L) % s.M, n = task / (s.L * s.M);
    if (!lv.ok[l]) continue;  // its gradients stay zero, as its (skipped) forward contribution
    const int64_t H = lv.H[l], W = lv.W[l];
    const int64_t row0 = (n * s.S + lv.start[l]) * s.M + m;
    const scalar_t* vbase = pv + row0 * s.D;
    acc_t* gvbase = pgv + row0 * s.D;
    for (int64_t q = 0; q < s.Lq; ++q) {
      const scalar_t* gq = pg + ((n * s.Lq + q) * s.M + m) * s.D;
      for (int64_t d = 0; d < s.D; ++d) gbuf[d] = static_cast<acc_t>(gq[d]);
      const int64_t point0 = (((n * s.Lq + q) * s.M + m) * s.L + l) * s.P;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t k = point0 + p;
        const Bilinear<acc_t> b = bilinear<acc_t>(ploc[2 * k], ploc[2 * k + 1], H, W);
        if (!b.any) continue;
        const acc_t a = static_cast<acc_t>(pa[k]);
        acc_t dot[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
        for (int c = 0; c < 4; ++c) {
          if (b.pixel[c] < 0) continue;
          const scalar_t* r = vbase + b.pixel[c] * MD;
          acc_t* gr = gvbase + b.pixel[c] * MD;
          const acc_t w = a * b.weight[c];
          dot[c] = dot_and_axpy(gbuf.data(), r, gr, w, s.D);
        }
        acc_t gx, gy;
        pixel_grad(b, dot, gx, gy);
        pga[k] = static_cast<scalar_t>(b.weight[0] * dot[0] + b.weight[1] * dot[1] + b.weight[2] * dot[2] +
                                       b.weight[3] * dot[3]);
        pgl[2 * k] = static_cast<scalar_t>(a * gx * static_cast<acc_t>(W));
        pgl[2 * k + 1] = static_cast<scalar_t>(a * gy * static_cast<acc_t>(H));
      }
    }
  }
}

at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  at::Tensor out = at::zeros({s.N, s.Lq, s.M * s.D}, value.options());
  if (out.numel() == 0) return out;
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.S);
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  const int64_t work_per_query = std::max<int64_t>(1, s.M * s.L * s.P * 4 * s.D);
  const int64_t grain = std::max<int64_t>(1, 65536 / work_per_query);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_cpu", [&] {
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    const scalar_t* ploc = loc.const_data_ptr<scalar_t>();
    const scalar_t* pa = attn.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.Lq, grain, [&](int64_t begin, int64_t end) {
      forward_range(s, lv, pv, ploc, pa, po, begin, end);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_grad_output(grad_output, s, value);
  const at::ScalarType acc_type = at::toOpMathType(value.scalar_type());
  // grad_value accumulates in the accumulation type (float for half/bfloat16) and is rounded once.
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::zeros(sampling_locations.sizes(), sampling_locations.options());
  at::Tensor grad_attn = at::zeros(attention_weights.sizes(), attention_weights.options());
  if (s.N == 0 || s.Lq == 0 || s.M == 0 || s.L == 0 || s.P == 0 || s.D == 0) {
    return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
  }
  const Levels lv = read_levels(spatial_shapes, level_start_index, s.S);
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(), attn = attention_weights.contiguous();
  const at::Tensor g = grad_output.to(value.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pv = v.const_data_ptr<scalar_t>();
    const scalar_t* ploc = loc.const_data_ptr<scalar_t>();
    const scalar_t* pa = attn.const_data_ptr<scalar_t>();
    const scalar_t* pg = g.const_data_ptr<scalar_t>();
    acc_t* pgv = grad_value.mutable_data_ptr<acc_t>();
    scalar_t* pgl = grad_loc.mutable_data_ptr<scalar_t>();
    scalar_t* pga = grad_attn.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.M * s.L, 1, [&](int64_t begin, int64_t end) {
      backward_tasks(s, lv, pv, ploc, pa, pg, pgv, pgl, pga, begin, end);
    });
  });
  return {grad_value.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace detr_ops::msda
