// Portable SIMD through GCC/Clang vector extensions: the compiler lowers these to the widest
// registers of the -march target (AVX-512, AVX2, NEON, ...) without per-ISA intrinsics.
#pragma once
#include <cstdint>

namespace mmfast::simd {

#if defined(__AVX512F__)
inline constexpr int kLanes = 16;
#elif defined(__AVX__) || defined(__ARM_NEON)
inline constexpr int kLanes = 8;
#else
inline constexpr int kLanes = 4;
#endif

typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vfloat load(const float* p) {
  vfloat v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

// Subtracting +0.0f is exact for every x (-0.0f included), so the compiler drops it and emits one
// broadcast; `x + vfloat{}` would cost a real addition (x + 0.0f is not x for x = -0.0f), and a
// lane-by-lane fill compiles to a masked broadcast per lane.
inline vfloat broadcast(float x) { return x - vfloat{}; }

inline vint iota(int32_t start) {
  vint v;
  for (int i = 0; i < kLanes; ++i) v[i] = start + i;
  return v;
}

}  // namespace mmfast::simd
