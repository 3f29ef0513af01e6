// CPU kernel of detr_ops::batched_linear_sum_assignment (schema in ops/linear_sum_assignment.cpp).
//
// Problems are independent, so the batch is spread over threads with cpu::parallel_tasks, largest
// first: DETR batches mix empty images with busy ones, and each thread takes the next problem when
// it is done with one. Each thread keeps one Solver (ops/cpu/linear_sum_assignment_solver.h) whose
// buffers serve all its problems. A problem's valid block is read through the input's strides and
// converted to float64 while it is copied into the solver (transposed when tall), so no contiguous
// or float64 copy of the whole batch is made.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <new>
#include <tuple>
#include <vector>

#include "ops/common/linear_sum_assignment_checks.h"
#include "ops/cpu/linear_sum_assignment_solver.h"
#include "ops/cpu/parallel_tasks.h"

namespace detr_ops::lsa {
namespace {

int64_t size_or(const c10::optional<at::Tensor>& sizes, int64_t b, int64_t fallback) {
  return sizes.has_value() ? sizes->const_data_ptr<int64_t>()[b] : fallback;
}

// Elements of a rows x cols block and columns of its virtual tiled problem, or false when either
// overflows int64 (only a stride-0 expanded cost can be that large; it cannot be solved).
bool problem_size(int64_t rows, int64_t cols, int64_t copies, int64_t* elements, int64_t* virtual_cols) {
  return !__builtin_mul_overflow(rows, cols, elements) && !__builtin_mul_overflow(copies, cols, virtual_cols) &&
         *elements <= (std::numeric_limits<int64_t>::max() / 8);
}

std::tuple<at::Tensor, at::Tensor> batched_linear_sum_assignment_cpu(const at::Tensor& cost,
                                                                     const c10::optional<at::Tensor>& num_rows_in,
                                                                     const c10::optional<at::Tensor>& num_cols_in,
                                                                     bool maximize, int64_t capacity,
                                                                     const c10::optional<at::Tensor>& capacities_in) {
  check_inputs(cost, num_rows_in, num_cols_in, capacity, capacities_in);
  const int64_t B = cost.size(0), R = cost.size(1), C = cost.size(2);
  c10::optional<at::Tensor> num_rows, num_cols, capacities;
  if (num_rows_in.has_value()) num_rows = num_rows_in->contiguous();
  if (num_cols_in.has_value()) num_cols = num_cols_in->contiguous();
  if (capacities_in.has_value()) capacities = capacities_in->contiguous();
  at::Tensor col_for_row = at::full({B, R}, -1, cost.options().dtype(at::kLong));
  at::Tensor status = at::zeros({B}, cost.options().dtype(at::kInt));
  int64_t* out = col_for_row.mutable_data_ptr<int64_t>();
  int32_t* st = status.mutable_data_ptr<int32_t>();
  const int64_t s0 = cost.stride(0), s1 = cost.stride(1), s2 = cost.stride(2);

  // Each problem's shape and copies (0: nothing to solve); status 3 for sizes out of range.
  std::vector<int64_t> rows(B), cols(B), copies(B);
  for (int64_t b = 0; b < B; ++b) {
    rows[b] = size_or(num_rows, b, R);
    cols[b] = size_or(num_cols, b, C);
    const int64_t k = size_or(capacities, b, capacity);
    const int64_t k_eff = effective_copies(k, rows[b], cols[b]);
    if (rows[b] < 0 || rows[b] > R || cols[b] < 0 || cols[b] > C || k < 0 || (capacities.has_value() && k_eff > capacity)) {
      st[b] = kBadSize;
      copies[b] = 0;
    } else {
      copies[b] = k_eff;
    }
  }

  // Largest problems first, so that the last ones handed out are the short ones.
  std::vector<int64_t> order(B);
  std::vector<double> work(B);
  double total_work = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double nr = static_cast<double>(rows[b]), nc = static_cast<double>(copies[b]) * static_cast<double>(cols[b]);
    work[b] = copies[b] == 0 ? 0.0 : nr * nc * std::min(nr, nc);  // rows x scan length x path length
    total_work += work[b];
    order[b] = b;
  }
  // Threads only for a few microseconds of solving or more. Measured on 2 cores: 16 images of 100
  // queries against COCO-like target counts (about 1.6e5 here) solve in 26 us on 2 threads and 33 us
  // on one; a batch of tiny problems (a small model's 16 queries x 2 targets) is not worth a wake-up.
  const bool parallel = total_work >= 2e4;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return work[a] > work[b]; });

  // A problem whose working memory cannot be allocated is reported after the parallel region, from
  // the calling thread, with its size.
  std::vector<char> out_of_memory(B, 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cost.scalar_type(), "batched_linear_sum_assignment_cpu",
                                  [&] {
    const scalar_t* base = cost.const_data_ptr<scalar_t>();
    cpu::parallel_tasks<Solver>(B, [&](int64_t k, Solver& solver) {
      const int64_t b = order[k];
      const int64_t nr = rows[b], nc = cols[b];
      if (copies[b] == 0) return;
      int64_t elements = 0, virtual_cols = 0;
      if (!problem_size(nr, nc, copies[b], &elements, &virtual_cols)) {
        out_of_memory[b] = 1;
        return;
      }
      const scalar_t* p = base + b * s0;
      try {
        Status s = solver.load(nr, nc, maximize, copies[b], [p, s1, s2](int64_t i, int64_t j) {
          return static_cast<double>(p[i * s1 + j * s2]);
        });
        if (s == kOk) s = solver.solve_loaded();
        if (s == kOk) solver.col_for_row(out + b * R);
        st[b] = s;
      } catch (const std::exception&) {  // std::bad_alloc, or std::length_error past max_size
        out_of_memory[b] = 1;
        solver = Solver();  // frees whatever was allocated
      }
    }, parallel);
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_WITH(OutOfMemoryError, !out_of_memory[b], "batched_linear_sum_assignment: not enough memory to solve "
                     "problem ", b, ", a ", rows[b], " x ", cols[b], " cost block (its float64 working copy alone takes ",
                     rows[b], " * ", cols[b], " * 8 bytes)");
  }
  return {col_for_row, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(detr_ops, CPU, m) {
  m.impl("batched_linear_sum_assignment", &batched_linear_sum_assignment_cpu);
}

}  // namespace detr_ops::lsa
