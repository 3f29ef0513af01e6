// Hot CPU loops are compiled twice: for baseline x86-64 (SSE2) and for AVX2+FMA, and the AVX2
// version runs when the CPU has it. torch extensions are built without -march, so otherwise every
// vectorised loop is limited to SSE2's 4 floats.
//
// Two ways, both measured:
// * DETR_CPU_CLONES on a function: g++ builds it for baseline and for x86-64-v3 and picks one at
//   load time (target_clones). Simplest; used by the MSDA loops.
// * isa_dispatch(body): the loop is written once as an always-inline function and called from a
//   lambda marked DETR_ISA_INLINE; isa_dispatch instantiates two thin wrappers around that lambda,
//   one compiled with DETR_TARGET_AVX2 and one for the baseline, and runs the one the CPU supports
//   (cpu_has_avx2()). The lambda and the loop are inlined into each wrapper, so each wrapper gets
//   its own vectorisation. Used by the box loops, where target_clones stopped the gradient loop from
//   vectorising at all. Capture by value ([=]) and pass pointers, not arrays: a captured array is
//   copied.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DETR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define DETR_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DETR_HAS_AVX2_PATH 1
#else
#define DETR_CPU_CLONES
#define DETR_TARGET_AVX2
#define DETR_HAS_AVX2_PATH 0
#endif

// On the lambda given to isa_dispatch: `[=]() DETR_ISA_INLINE { loop(...); }`. Without it g++ may
// keep the lambda out of line, and the loop would then be compiled once, for the baseline.
#define DETR_ISA_INLINE __attribute__((always_inline))

namespace detr_ops::cpu {

inline bool cpu_has_avx2() {
#if DETR_HAS_AVX2_PATH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

namespace isa_detail {

template <typename Body>
DETR_TARGET_AVX2 void run_avx2(const Body& body) {
  body();
}

template <typename Body>
void run_baseline(const Body& body) {
  body();
}

}  // namespace isa_detail

// Runs body() as its AVX2+FMA build where the CPU has AVX2 and FMA, else as its baseline build.
template <typename Body>
inline void isa_dispatch(const Body& body) {
  if (cpu_has_avx2()) {
    isa_detail::run_avx2(body);
  } else {
    isa_detail::run_baseline(body);
  }
}

}  // namespace detr_ops::cpu
