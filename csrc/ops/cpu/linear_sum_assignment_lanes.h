// The vector lanes of the host assignment solver's loops (linear_sum_assignment_solver.h and
// linear_sum_assignment_warm_start.h): GCC/Clang vector extensions, one source for the AVX2 build
// (4 lanes) and the baseline build (2 lanes, SSE2 or NEON).
#pragma once

#include <cstdint>
#include <cstring>

namespace detr_ops::lsa::scan {

// The 32-byte vectors below never cross a call boundary (everything using them is always_inline),
// so GCC's note that passing them by value changes the ABI between AVX and non-AVX builds is moot.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

// W float64 lanes and the matching 64-bit integer lanes (GCC/Clang vector extensions), one source
// for both builds: W = 4 (one AVX2 register) in the AVX2 build, W = 2 (one SSE2 / NEON register) in
// the baseline build. (Four lanes without AVX are lowered element by element: 20x slower.)
template <int W>
struct Lanes;
template <>
struct Lanes<2> {
  typedef double d __attribute__((vector_size(16)));
  typedef int64_t i __attribute__((vector_size(16)));
};
template <>
struct Lanes<4> {
  typedef double d __attribute__((vector_size(32)));
  typedef int64_t i __attribute__((vector_size(32)));
};

#define DETR_LSA_INLINE inline __attribute__((always_inline))

template <typename V, typename T>
DETR_LSA_INLINE V load(const T* p) {
  V x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
template <typename V, typename T>
DETR_LSA_INLINE void store(T* p, const V& x) {
  std::memcpy(p, &x, sizeof x);
}

#pragma GCC diagnostic pop

}  // namespace detr_ops::lsa::scan
