// CPU kernel of detr_ops::batched_linear_sum_assignment (schema in ops/linear_sum_assignment.cpp).
//
// Problems are independent, so the batch is spread over threads with at::parallel_for; each
// thread keeps one Solver (ops/common/lsa_solver.h) whose buffers serve all its problems. A
// problem's valid block is read through the input's strides and converted to float64 while it is
// copied into the solver (transposed when tall), so no contiguous or float64 copy of the whole
// batch is made.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "ops/common/lsa_checks.h"
#include "ops/common/lsa_solver.h"

namespace detr_ops::lsa {
namespace {

int64_t size_or(const c10::optional<at::Tensor>& sizes, int64_t b, int64_t fallback) {
  return sizes.has_value() ? sizes->const_data_ptr<int64_t>()[b] : fallback;
}

std::tuple<at::Tensor, at::Tensor> batched_linear_sum_assignment_cpu(const at::Tensor& cost,
                                                                     const c10::optional<at::Tensor>& num_rows_in,
                                                                     const c10::optional<at::Tensor>& num_cols_in,
                                                                     bool maximize) {
  check_inputs(cost, num_rows_in, num_cols_in);
  const int64_t B = cost.size(0), R = cost.size(1), C = cost.size(2);
  c10::optional<at::Tensor> num_rows, num_cols;
  if (num_rows_in.has_value()) num_rows = num_rows_in->contiguous();
  if (num_cols_in.has_value()) num_cols = num_cols_in->contiguous();
  at::Tensor col_for_row = at::full({B, R}, -1, cost.options().dtype(at::kLong));
  at::Tensor status = at::zeros({B}, cost.options().dtype(at::kInt));
  int64_t* out = col_for_row.mutable_data_ptr<int64_t>();
  int32_t* st = status.mutable_data_ptr<int32_t>();
  const int64_t s0 = cost.stride(0), s1 = cost.stride(1), s2 = cost.stride(2);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "batched_linear_sum_assignment_cpu",
                                  [&] {
    const scalar_t* base = cost.const_data_ptr<scalar_t>();
    // One problem per task: even 900x100 problems take long enough to amortise the scheduling.
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Solver<double> solver;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t nr = size_or(num_rows, b, R), nc = size_or(num_cols, b, C);
        if (nr < 0 || nr > R || nc < 0 || nc > C) {
          st[b] = kBadSize;
          continue;
        }
        if (nr == 0 || nc == 0) continue;
        const scalar_t* p = base + b * s0;
        Status s = solver.load(nr, nc, maximize, [p, s1, s2](int64_t i, int64_t j) {
          return static_cast<double>(p[i * s1 + j * s2]);
        });
        if (s == kOk) s = solver.solve_loaded();
        if (s == kOk) solver.col_for_row(out + b * R);
        st[b] = s;
      }
    });
  });
  return {col_for_row, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("batched_linear_sum_assignment", &batched_linear_sum_assignment_cpu);
}

}  // namespace detr_ops::lsa
