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

// How many vectors of kVectorBytes the register file holds, for kernels that keep a tile of
// accumulators in registers: 32 zmm on AVX-512; 16 ymm on AVX2; on NEON a vector is two of the 32
// q registers, so 16 as well.
inline constexpr int kVectorBytes = kLanes * sizeof(float);
#if defined(__AVX512F__)
inline constexpr int kVectorRegisters = 32;
#else
inline constexpr int kVectorRegisters = 16;
#endif

// A vector of kVectorBytes of any arithmetic type (float64 for gradcheck paths).
template <typename T>
struct Vector {
  typedef T type __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / sizeof(T);
};

using vfloat = Vector<float>::type;
using vint = Vector<int32_t>::type;

// One vector from memory of any alignment (float: a vfloat).
template <typename T>
inline typename Vector<T>::type load(const T* p) {
  typename Vector<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, const vfloat& v) { __builtin_memcpy(p, &v, sizeof(v)); }

inline float sum(const vfloat& v) {
  float total = 0.f;
  for (int lane = 0; lane < kLanes; ++lane) total += v[lane];
  return total;
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

// e^x lane by lane (Cephes expf): 2^n p(r) with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in
// two parts for precision), p of degree 6 on |r| <= ln(2)/2, about 1 ulp. x is clamped to
// [-87.3, 88.3] so that 2^n stays a normal float: underflow gives ~1e-38 instead of 0.
inline vfloat exp(vfloat x) {
  x = x < -87.3f ? broadcast(-87.3f) : x;
  x = x > 88.3f ? broadcast(88.3f) : x;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to integer
  const vfloat n = (x * 1.44269504088896341f + kRound) - kRound;
  const vfloat r = x - n * 0.693359375f - n * -2.12194440e-4f;
  vfloat p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat two_to_n;
  __builtin_memcpy(&two_to_n, &bits, sizeof(two_to_n));
  return p * two_to_n;
}

// a . b over n floats; two accumulator chains hide the FMA latency.
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  vfloat acc0{}, acc1{};
  int64_t k = 0;
  for (; k + 2 * kLanes <= n; k += 2 * kLanes) {
    acc0 += load(a + k) * load(b + k);
    acc1 += load(a + k + kLanes) * load(b + k + kLanes);
  }
  float total = sum(acc0 + acc1);
  for (; k < n; ++k) total += a[k] * b[k];
  return total;
}

}  // namespace mmfast::simd
