// Host-side argument checks of the ms_deform_attn operators, shared by the CPU and CUDA kernels.
// They check what memory safety needs (ranks, matching sizes, dtypes, devices, size products that
// must fit int64); the value-level invariants (spatial shapes summing to S, level start indices)
// are checked in Python, where the caller chooses whether to pay a device sync for them, and the
// kernels skip a level that does not fit (level_in_bounds) instead of reading past value.
//
// Two layouts of the sampling points, one set of kernels:
// * ms_deform_attn: locations [N, Lq, M, L, P, 2], weights [N, Lq, M, L, P] (P points per level);
// * ms_deform_attn_points: locations [N, Lq, M, K, 2], weights [N, Lq, M, K] with
//   K = sum(num_points_list), level l owning num_points_list[l] consecutive points (RT-DETRv2,
//   D-FINE).
// Both are K = sum of the per-level counts consecutive points per (n, q, m) in memory; Points says
// where each level's run starts.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace detr_ops::msda {

struct Sizes {
  int64_t N, S, M, D, Lq, L;
  int64_t K;  // sampling points per (n, q, m), over all levels
};

// Level l owns points [begin[l], begin[l + 1]) of each (n, q, m).
struct Points {
  int64_t uniform;             // the count of every level (ms_deform_attn), or -1 (a list)
  std::vector<int64_t> begin;  // L + 1 prefix sums
  int64_t count(int64_t l) const { return begin[l + 1] - begin[l]; }
};

// a * b, or an error naming what the product is.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t out = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(a, b, &out), what, " (", a, " x ", b, ") overflows int64");
  return out;
}

namespace detail {

inline void check_value_and_levels(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                   const at::Tensor& level_start_index) {
  TORCH_CHECK_VALUE(value.dim() == 4, "value must be [N, S, M, D], got shape ", value.sizes());
  const at::ScalarType t = value.scalar_type();
  TORCH_CHECK_VALUE(t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble,
                    "value must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK_VALUE(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
                    "spatial_shapes must be [L, 2], got shape ", spatial_shapes.sizes());
  TORCH_CHECK_VALUE(spatial_shapes.scalar_type() == at::kLong, "spatial_shapes must be int64, got ",
                    spatial_shapes.scalar_type());
  TORCH_CHECK_VALUE(level_start_index.scalar_type() == at::kLong, "level_start_index must be int64, got ",
                    level_start_index.scalar_type());
  TORCH_CHECK_VALUE(level_start_index.dim() == 1 && level_start_index.size(0) == spatial_shapes.size(0),
                    "level_start_index must be [L] with L = ", spatial_shapes.size(0), ", got shape ",
                    level_start_index.sizes());
}

inline void check_dtypes_devices(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights) {
  for (const at::Tensor* t : {&sampling_locations, &attention_weights}) {
    TORCH_CHECK_VALUE(t->scalar_type() == value.scalar_type(),
                      "value, sampling_locations and attention_weights must have the same dtype, got ",
                      value.scalar_type(), ", ", sampling_locations.scalar_type(), ", ",
                      attention_weights.scalar_type());
  }
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK_VALUE(t->device() == value.device(), "all ms_deform_attn inputs must be on value's device ",
                      value.device(), ", got one on ", t->device());
  }
}

// The products the kernels form from the sizes: they fit int64 for tensors that hold data, but an
// empty or stride-0 (expanded) tensor can declare sizes whose products do not.
inline void check_products(const Sizes& s) {
  const int64_t MD = checked_mul(s.M, s.D, "value's M * D");
  checked_mul(checked_mul(s.N, s.S, "value's N * S"), MD, "value's N * S * M * D");
  const int64_t NLq = checked_mul(s.N, s.Lq, "N * Lq");
  checked_mul(NLq, MD, "the output's N * Lq * M * D");
  const int64_t points = checked_mul(checked_mul(NLq, s.M, "N * Lq * M"), s.K, "the sampling points N * Lq * M * K");
  checked_mul(points, 4, "the bilinear corners N * Lq * M * K * 4");
}

}  // namespace detail

// ms_deform_attn: locations [N, Lq, M, L, P, 2], weights [N, Lq, M, L, P].
inline Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights, Points* points = nullptr) {
  detail::check_value_and_levels(value, spatial_shapes, level_start_index);
  const int64_t L = spatial_shapes.size(0);
  const int64_t N = value.size(0), M = value.size(2);
  TORCH_CHECK_VALUE(sampling_locations.dim() == 6 && sampling_locations.size(0) == N &&
                        sampling_locations.size(2) == M && sampling_locations.size(3) == L &&
                        sampling_locations.size(5) == 2,
                    "sampling_locations must be [N, Lq, M, L, P, 2] = [", N, ", Lq, ", M, ", ", L,
                    ", P, 2], got shape ", sampling_locations.sizes());
  TORCH_CHECK_VALUE(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
                    "attention_weights must be [N, Lq, M, L, P] = ", sampling_locations.sizes().slice(0, 5),
                    ", got shape ", attention_weights.sizes());
  detail::check_dtypes_devices(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const int64_t P = sampling_locations.size(4);
  const Sizes s{N, value.size(1), M, value.size(3), sampling_locations.size(1), L,
                checked_mul(L, P, "sampling_locations' L * P")};
  detail::check_products(s);
  if (points != nullptr) {
    points->uniform = P;
    points->begin.resize(L + 1);
    for (int64_t l = 0; l <= L; ++l) points->begin[l] = l * P;
  }
  return s;
}

// ms_deform_attn_points: locations [N, Lq, M, K, 2], weights [N, Lq, M, K], K = sum(num_points_list).
inline Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights, c10::IntArrayRef num_points_list, Points* points) {
  detail::check_value_and_levels(value, spatial_shapes, level_start_index);
  const int64_t L = spatial_shapes.size(0);
  const int64_t N = value.size(0), M = value.size(2);
  TORCH_CHECK_VALUE(static_cast<int64_t>(num_points_list.size()) == L,
                    "num_points_list must have one entry per level (L = ", L, "), got ", num_points_list.size());
  points->uniform = -1;
  points->begin.assign(1, 0);
  for (const int64_t p : num_points_list) {
    TORCH_CHECK_VALUE(p >= 0, "num_points_list must hold non-negative counts, got ", num_points_list);
    int64_t next = 0;
    TORCH_CHECK_VALUE(!__builtin_add_overflow(points->begin.back(), p, &next), "sum(num_points_list) overflows int64");
    points->begin.push_back(next);
  }
  const int64_t K = points->begin.back();
  TORCH_CHECK_VALUE(sampling_locations.dim() == 5 && sampling_locations.size(0) == N &&
                        sampling_locations.size(2) == M && sampling_locations.size(3) == K &&
                        sampling_locations.size(4) == 2,
                    "sampling_locations must be [N, Lq, M, sum(num_points_list), 2] = [", N, ", Lq, ", M, ", ", K,
                    ", 2], got shape ", sampling_locations.sizes());
  TORCH_CHECK_VALUE(attention_weights.sizes() == sampling_locations.sizes().slice(0, 4),
                    "attention_weights must be [N, Lq, M, sum(num_points_list)] = ",
                    sampling_locations.sizes().slice(0, 4), ", got shape ", attention_weights.sizes());
  detail::check_dtypes_devices(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const Sizes s{N, value.size(1), M, value.size(3), sampling_locations.size(1), L, K};
  detail::check_products(s);
  return s;
}

// The incoming gradient of a backward op: the forward output's shape, dtype and device (a grad of
// another dtype, a complex one say, is refused rather than silently converted).
inline void check_grad_output(const at::Tensor& grad_output, const Sizes& s, const at::Tensor& value) {
  TORCH_CHECK_VALUE(grad_output.dim() == 3 && grad_output.size(0) == s.N && grad_output.size(1) == s.Lq &&
                        grad_output.size(2) == s.M * s.D,
                    "grad_output must be [N, Lq, M*D] = [", s.N, ", ", s.Lq, ", ", s.M * s.D, "], got shape ",
                    grad_output.sizes());
  TORCH_CHECK_VALUE(grad_output.scalar_type() == value.scalar_type(), "grad_output must have value's dtype ",
                    value.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.device() == value.device(), "grad_output must be on ", value.device(), ", got ",
                    grad_output.device());
}

// The four ops of one backend, checked: each checks its inputs (the point layout of ms_deform_attn,
// or of num_points_list), then calls the backend's `forward` / `backward`, which take the sizes and
// point layout and the five (six) tensors. One definition for the CPU and CUDA files, so the two
// backends register the same entry points: TORCH_LIBRARY_IMPL(..., m.impl("ms_deform_attn",
// &Entries<forward, backward>::ms_deform_attn) ...).
template <auto forward, auto backward>
struct Entries {
  static at::Tensor ms_deform_attn(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                   const at::Tensor& attention_weights) {
    Points points;
    const Sizes s =
        check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, &points);
    return forward(s, std::move(points), value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights);
  }

  static at::Tensor ms_deform_attn_points(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                          const at::Tensor& attention_weights, at::IntArrayRef num_points_list) {
    Points points;
    const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                 num_points_list, &points);
    return forward(s, std::move(points), value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward(
      const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
      const at::Tensor& attention_weights) {
    Points points;
    const Sizes s =
        check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, &points);
    return backward(s, std::move(points), grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_points_backward(
      const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
      const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
      at::IntArrayRef num_points_list) {
    Points points;
    const Sizes s = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                 num_points_list, &points);
    return backward(s, std::move(points), grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                    attention_weights);
  }
};

}  // namespace detr_ops::msda
