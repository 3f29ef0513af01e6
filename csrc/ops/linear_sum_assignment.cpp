// Schemas of the batched assignment operator. Kernels: ops/cpu/linear_sum_assignment_kernel.cpp,
// ops/cuda/linear_sum_assignment_kernel.cu, and the Triton twin in detr_ops/triton; fake kernel
// and input checks: detr_ops/ops/linear_sum_assignment.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(detr_ops, m) {
  // cost [B,R,C] (float16/bfloat16/float32/float64, solved in float64); num_rows / num_cols:
  // optional int64 [B], each problem's valid top-left block (default R / C). Returns
  //   col_for_row int64 [B,R]: matched column of each row, -1 for unmatched or padding rows;
  //   status      int32 [B]:   0 ok, 1 invalid entries, 2 infeasible, 3 size out of range.
  // Each problem's matching is scipy.optimize.linear_sum_assignment's, index for index.
  m.def(
      "batched_linear_sum_assignment(Tensor cost, Tensor? num_rows, Tensor? num_cols, bool maximize)"
      " -> (Tensor, Tensor)");
}
