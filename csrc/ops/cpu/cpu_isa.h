// Hot CPU loops are compiled twice: for baseline x86-64 (SSE2) and for AVX2+FMA, and the AVX2
// version runs when the CPU has it. torch extensions are built without -march, so otherwise every
// vectorised loop is limited to SSE2's 4 floats.
//
// Two ways, both measured:
// * DETR_CPU_CLONES on a function: g++ builds it for baseline and for x86-64-v3 and picks one at
//   load time (target_clones). Simplest; used by the MSDA loops.
// * Write the loop once as an always-inline function, call it from two thin wrappers, one marked
//   DETR_TARGET_AVX2, and choose with cpu_has_avx2(). Used by the box loops, where target_clones
//   stopped the gradient loop from vectorising at all.
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

namespace detr_ops::cpu {

inline bool cpu_has_avx2() {
#if DETR_HAS_AVX2_PATH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace detr_ops::cpu
