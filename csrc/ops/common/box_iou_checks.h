// Host-side argument checks and input preparation of the box operators (pairwise_iou, giou_loss
// and their backwards), shared by the CPU and CUDA host wrappers: a C++ caller going through the
// dispatcher gets the same messages as a Python caller, and both backends hand their kernels the
// same tensors (as ops/common/matching_cost_checks.h does for the matching cost).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <vector>

namespace detr_ops::box {

// True for "cxcywh", false for "xyxy"; anything else is an error naming the argument.
inline bool parse_box_format(c10::string_view box_format) {
  if (box_format == "xyxy") return false;
  if (box_format == "cxcywh") return true;
  TORCH_CHECK_VALUE(false, "box_format must be 'xyxy' or 'cxcywh', got '", std::string(box_format), "'");
}

// The dtypes the box kernels are built for. Not at::isFloatingType: that admits the float8 types,
// which then failed deep inside the dispatch macro without naming the argument.
inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

inline void check_box_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == 4, name, " must have a last dimension of size 4 (boxes), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(is_kernel_float(t.scalar_type()), name, " must be float16, bfloat16, float32 or float64, got ",
                    t.scalar_type());
}

// The loss's eps: finite and >= 0 (a negative or NaN eps put the loss outside [0, 2]).
inline void check_eps(double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
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
  // The [B, N, M] result must be addressable in bytes (up to 8 per element): with expanded
  // (stride-0) inputs B*N*M can pass int64 while the inputs themselves are tiny. Checked before
  // anything is allocated; every index the kernels form is below this product.
  const int64_t B = boxes1.dim() == 3 ? boxes1.size(0) : 1;
  const int64_t N = boxes1.size(-2), M = boxes2.size(-2);
  int64_t BN = 0, BNM = 0, bytes = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(B, N, &BN) && !c10::mul_overflows(BN, M, &BNM) &&
                        !c10::mul_overflows(BNM, int64_t{8}, &bytes),
                    "boxes1 and boxes2: the pairwise result of ", B, " x ", N, " x ", M,
                    " elements is too large to address");
}

// Elementwise inputs: the same shape [..., 4].
inline void check_elementwise(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_tensor(boxes1, "boxes1");
  check_box_tensor(boxes2, "boxes2");
  check_same(boxes1, boxes2, "boxes1", "boxes2");
  TORCH_CHECK_VALUE(boxes1.sizes() == boxes2.sizes(), "boxes1 and boxes2 must have the same shape, got ",
                    boxes1.sizes(), " and ", boxes2.sizes());
  // Expanded (stride-0) inputs are copied to contiguous ones: their bytes (up to 8 each) must be
  // addressable, or the copy fails with an overflow deep in the allocator.
  int64_t bytes = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(boxes1.numel(), int64_t{8}, &bytes), "boxes1 and boxes2: ",
                    boxes1.numel() / 4, " pairs of boxes are too many to address");
}

// The upstream gradient of a backward op: any of the kernels' float dtypes (it is converted), never
// an integer, bool, complex (the imaginary part was silently dropped) or float8 one.
inline void check_grad(const at::Tensor& grad, at::IntArrayRef expected, const at::Tensor& boxes1) {
  TORCH_CHECK_VALUE(grad.sizes() == expected, "grad must have shape ", expected, ", got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == boxes1.device(), "grad must be on ", boxes1.device(), ", got ", grad.device());
  TORCH_CHECK_VALUE(is_kernel_float(grad.scalar_type()), "grad must be float16, bfloat16, float32 or float64, got ",
                    grad.scalar_type());
}

// Output shape of the pairwise op.
inline std::vector<int64_t> pairwise_shape(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  if (boxes1.dim() == 2) return {boxes1.size(0), boxes2.size(0)};
  return {boxes1.size(0), boxes1.size(1), boxes2.size(1)};
}

// The pairwise op's inputs as the kernels read them: batched (an [N,4] x [M,4] call is batch 1)
// and contiguous, in the input dtype, with the outputs allocated. Allocation needs no device
// guard (every tensor is created on its input's device); the CUDA wrappers set one for the launch.
struct PairwiseArgs {
  at::Tensor boxes1, boxes2;  // [B, N, 4], [B, M, 4]
  int64_t B = 0, N = 0, M = 0;
  bool cxcywh = false;
  at::Tensor out;             // forward: [B, N, M], uninitialised
  at::Tensor grad;            // backward: the upstream gradient as [B, N, M], in the input dtype
  at::Tensor grad1, grad2;    // backward: zeros like boxes1 / boxes2 (all of them stay 0 when N*M = 0)
  std::vector<int64_t> out_shape, shape1, shape2;  // the caller's shapes, to return the results in

  bool empty() const { return B == 0 || N == 0 || M == 0; }
  at::Tensor result() const { return out.view(out_shape); }
  std::tuple<at::Tensor, at::Tensor> grads() const { return {grad1.view(shape1), grad2.view(shape2)}; }
};

// (after check_pairwise)
inline PairwiseArgs batch_pairwise(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view box_format) {
  PairwiseArgs a;
  a.cxcywh = parse_box_format(box_format);
  a.boxes1 = boxes1.dim() == 2 ? boxes1.unsqueeze(0) : boxes1;
  a.boxes2 = boxes2.dim() == 2 ? boxes2.unsqueeze(0) : boxes2;
  a.B = a.boxes1.size(0);
  a.N = a.boxes1.size(1);
  a.M = a.boxes2.size(1);
  // An empty result reads no box: an expanded [N, 4] input of any size is not copied then.
  if (!a.empty()) {
    a.boxes1 = a.boxes1.contiguous();
    a.boxes2 = a.boxes2.contiguous();
  }
  a.out_shape = pairwise_shape(boxes1, boxes2);
  a.shape1 = boxes1.sizes().vec();
  a.shape2 = boxes2.sizes().vec();
  return a;
}

inline PairwiseArgs prepare_pairwise(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                     c10::string_view box_format) {
  check_pairwise(boxes1, boxes2);
  PairwiseArgs a = batch_pairwise(boxes1, boxes2, box_format);
  a.out = at::empty({a.B, a.N, a.M}, a.boxes1.options());
  return a;
}

inline PairwiseArgs prepare_pairwise_backward(const at::Tensor& grad, const at::Tensor& boxes1,
                                              const at::Tensor& boxes2, c10::string_view box_format) {
  check_pairwise(boxes1, boxes2);
  check_grad(grad, pairwise_shape(boxes1, boxes2), boxes1);
  PairwiseArgs a = batch_pairwise(boxes1, boxes2, box_format);
  a.grad = grad.to(a.boxes1.scalar_type()).reshape({a.B, a.N, a.M}).contiguous();
  a.grad1 = at::zeros_like(a.boxes1);
  a.grad2 = at::zeros_like(a.boxes2);
  return a;
}

// The elementwise loss's inputs: both box tensors contiguous in the input dtype, K pairs, and the
// outputs. The loss and its upstream gradient are in the accumulation dtype (float32; float64 for
// float64 input), as the schema says.
struct ElementwiseArgs {
  at::Tensor boxes1, boxes2;  // [..., 4], the same shape
  int64_t K = 0;              // number of pairs
  bool cxcywh = false;
  at::Tensor out;             // forward: [...], uninitialised
  at::Tensor grad;            // backward: the upstream gradient [...], contiguous
  at::Tensor grad1, grad2;    // backward: like boxes1 / boxes2, uninitialised (every pair is written)
};

// (after check_elementwise)
inline ElementwiseArgs contiguous_elementwise(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                              c10::string_view box_format) {
  ElementwiseArgs a;
  a.cxcywh = parse_box_format(box_format);
  a.boxes1 = boxes1.contiguous();
  a.boxes2 = boxes2.contiguous();
  a.K = a.boxes1.numel() / 4;
  return a;
}

inline at::ScalarType loss_dtype(const at::Tensor& boxes) { return at::toOpMathType(boxes.scalar_type()); }

inline ElementwiseArgs prepare_elementwise(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                           c10::string_view box_format, double eps) {
  check_elementwise(boxes1, boxes2);
  check_eps(eps);
  ElementwiseArgs a = contiguous_elementwise(boxes1, boxes2, box_format);
  a.out = at::empty(boxes1.sizes().slice(0, boxes1.dim() - 1), a.boxes1.options().dtype(loss_dtype(boxes1)));
  return a;
}

inline ElementwiseArgs prepare_elementwise_backward(const at::Tensor& grad, const at::Tensor& boxes1,
                                                    const at::Tensor& boxes2, c10::string_view box_format,
                                                    double eps) {
  check_elementwise(boxes1, boxes2);
  check_eps(eps);
  check_grad(grad, boxes1.sizes().slice(0, boxes1.dim() - 1), boxes1);
  ElementwiseArgs a = contiguous_elementwise(boxes1, boxes2, box_format);
  a.grad = grad.to(loss_dtype(boxes1)).contiguous();
  a.grad1 = at::empty_like(a.boxes1);
  a.grad2 = at::empty_like(a.boxes2);
  return a;
}

}  // namespace detr_ops::box
