// Schemas of the batched assignment operator. Kernels: ops/cpu/linear_sum_assignment_kernel.cpp,
// ops/cuda/linear_sum_assignment_kernel.cu, and the Triton twin in detr_ops/triton; fake kernel
// and input checks: detr_ops/ops/linear_sum_assignment.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // cost [B,R,C] (float16/bfloat16/float32/float64, solved in float64); num_rows / num_cols:
  // optional int64 [B], each problem's valid top-left block (default R / C).
  // capacity (>= 0): every column may take up to `capacity` rows, defined as scipy on the block
  // with its columns tiled capacity times (copy c of column j is column c*C+j), reported as the
  // original column j. With capacities (optional int64 [B]) problem b has capacity capacities[b],
  // and `capacity` is an upper bound the GPU kernels size their workspace with: a problem whose
  // capacity is negative or, after the exact reduction of effective_copies
  // (ops/common/linear_sum_assignment.h), above the bound gets status 3.
  // (SymInt, as the Triton twin's schema inferred from `capacity: int` has it; the kernels take it
  // as int64_t.) Returns
  //   col_for_row int64 [B,R]: matched column of each row, -1 for unmatched or padding rows;
  //   status      int32 [B]:   0 ok, 1 invalid entries, 2 infeasible, 3 size or capacity out of range.
  // Each problem's matching is scipy.optimize.linear_sum_assignment's, index for index.
  m.def(
      "batched_linear_sum_assignment(Tensor cost, Tensor? num_rows, Tensor? num_cols, bool maximize, "
      "SymInt capacity=1, Tensor? capacities=None) -> (Tensor, Tensor)");
}
