// Host-side argument checks of the box operators, shared by the CPU and CUDA kernels so that a
// C++ caller going through the dispatcher gets the same messages as a Python caller.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

namespace detr_ops::box {

// True for "cxcywh", false for "xyxy"; anything else is an error naming the argument.
inline bool parse_box_format(c10::string_view box_format) {
  if (box_format == "xyxy") return false;
  if (box_format == "cxcywh") return true;
  TORCH_CHECK_VALUE(false, "box_format must be 'xyxy' or 'cxcywh', got '", std::string(box_format), "'");
}

inline void check_box_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == 4, name, " must have a last dimension of size 4 (boxes), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name,
                    " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " and ", nb, " must be on the same device, got ", a.device(),
                    " and ", b.device());
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), na, " and ", nb, " must have the same dtype, got ",
                    a.scalar_type(), " and ", b.scalar_type());
}

// Pairwise inputs: [N,4] x [M,4] or [B,N,4] x [B,M,4].
inline void check_pairwise(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_tensor(boxes1, "boxes1");
  check_box_tensor(boxes2, "boxes2");
  check_same(boxes1, boxes2, "boxes1", "boxes2");
  TORCH_CHECK_VALUE(boxes1.dim() == 2 || boxes1.dim() == 3, "boxes1 must be [N,4] or [B,N,4], got shape ",
                    boxes1.sizes());
  TORCH_CHECK_VALUE(boxes2.dim() == boxes1.dim(), "boxes2 must have as many dimensions as boxes1 (",
                    boxes1.dim(), "), got shape ", boxes2.sizes());
  if (boxes1.dim() == 3) {
    TORCH_CHECK_VALUE(boxes1.size(0) == boxes2.size(0), "boxes1 and boxes2 must have the same batch size, got ",
                      boxes1.size(0), " and ", boxes2.size(0));
  }
}

// Elementwise inputs: the same shape [..., 4].
inline void check_elementwise(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_tensor(boxes1, "boxes1");
  check_box_tensor(boxes2, "boxes2");
  check_same(boxes1, boxes2, "boxes1", "boxes2");
  TORCH_CHECK_VALUE(boxes1.sizes() == boxes2.sizes(), "boxes1 and boxes2 must have the same shape, got ",
                    boxes1.sizes(), " and ", boxes2.sizes());
}

inline void check_grad(const at::Tensor& grad, at::IntArrayRef expected, const at::Tensor& boxes1) {
  TORCH_CHECK_VALUE(grad.sizes() == expected, "grad must have shape ", expected, ", got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == boxes1.device(), "grad must be on ", boxes1.device(), ", got ", grad.device());
}

// Output shape of the pairwise op.
inline std::vector<int64_t> pairwise_shape(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  if (boxes1.dim() == 2) return {boxes1.size(0), boxes2.size(0)};
  return {boxes1.size(0), boxes1.size(1), boxes2.size(1)};
}

}  // namespace detr_ops::box
