// Portable SIMD through GCC/Clang vector extensions: the compiler lowers these to the widest
// registers of the -march target (AVX-512, AVX2, NEON, ...) without per-ISA intrinsics; only the
// partial loads and stores of a row's last lanes use the ISA's masked moves where it has them.
#pragma once
#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

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

// The first n (0 <= n < kLanes) floats at p in the first lanes, the others 0; nothing past p + n
// is read (a masked load where the ISA has one), so a row's tail needs no scalar loop.
inline vfloat load_first(const float* p, int64_t n) {
#if defined(__AVX512F__)
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
#elif defined(__AVX__)
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
#else
  vfloat v{};
  for (int64_t lane = 0; lane < n; ++lane) v[lane] = p[lane];
  return v;
#endif
}

// The first n (0 <= n < kLanes) lanes of v to p; the memory past p + n is left untouched.
inline void store_first(float* p, const vfloat& v, int64_t n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
#elif defined(__AVX__)
  _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v);
#else
  for (int64_t lane = 0; lane < n; ++lane) p[lane] = v[lane];
#endif
}

// The lanes' sum, by halves (log2(kLanes) dependent adds, not kLanes): in a loop over a
// classifier's rows the lane-by-lane chain was the critical path.
inline float sum(const vfloat& v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(v);
#elif defined(__AVX__)
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_shuffle_ps(quarter, quarter, 1)));
#else
  float total = 0.f;
  for (int lane = 0; lane < kLanes; ++lane) total += v[lane];
  return total;
#endif
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

// a . b over n floats; two accumulator chains hide the FMA latency, and the last n % kLanes
// floats take one masked vector, not a scalar loop (at n = 50 that loop was 18 of the 50).
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  vfloat acc0{}, acc1{};
  int64_t k = 0;
  for (; k + 2 * kLanes <= n; k += 2 * kLanes) {
    acc0 += load(a + k) * load(b + k);
    acc1 += load(a + k + kLanes) * load(b + k + kLanes);
  }
  if (k + kLanes <= n) {
    acc0 += load(a + k) * load(b + k);
    k += kLanes;
  }
  if (k < n) acc1 += load_first(a + k, n - k) * load_first(b + k, n - k);
  return sum(acc0 + acc1);
}

}  // namespace mmfast::simd
