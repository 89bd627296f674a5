// Fixed-width float vectors for the kernel's lane loops (GCC/Clang vector extensions), included by
// kernel_impl.h inside the per-instruction-set namespace. kp is a multiple of 4 and every latent
// vector starts 16-byte aligned, so a vector of K floats is K/4 chunks (K/8 or K/16 when wide).
#pragma once

typedef float f4 __attribute__((vector_size(16)));
typedef float f8 __attribute__((vector_size(32)));
typedef float f16 __attribute__((vector_size(64)));

#ifndef FMR_WIDE
#define FMR_WIDE 0
#endif

// The chunk type for a compile-time size K (K = 0: run-time kp, chunks of 4): 16 floats when
// FMR_WIDE >= 2 (AVX-512) and 16 divides K, 8 when FMR_WIDE and 8 divides K, else 4.
template <int K>
using Chunk =
    typename std::conditional<(FMR_WIDE >= 2 && K > 0 && K % 16 == 0), f16,
                              typename std::conditional<(FMR_WIDE && K > 0 && K % 8 == 0), f8, f4>::type>::type;

template <class T>
constexpr int width() {
  return static_cast<int>(sizeof(T) / sizeof(float));
}

template <class T>
inline T load(const float* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
inline void store(float* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}
template <class T>
inline T splat(float x) {  // broadcast: x − 0 is exactly x (unlike x + 0 for −0.0), so it folds away
  const T zero = {};
  return x - zero;
}
template <class T>
inline float hsum(T v) {
  float s = 0.f;
  for (int i = 0; i < width<T>(); ++i) s += v[i];
  return s;
}

// 1/sqrt(v) estimates from the hardware (12 bits; 14 with AVX-512), refined by ada_step. 3-4x
// cheaper than sqrt + divide, which would bound AdaGrad's throughput. (The estimate differs between
// CPU vendors, so results are reproducible per machine, not bit-identical across them.)
inline f4 rsqrt_estimate(f4 v) {
#if defined(__x86_64__) || defined(__i386__)
  return reinterpret_cast<f4>(_mm_rsqrt_ps(reinterpret_cast<__m128>(v)));
#else
  for (int i = 0; i < 4; ++i) v[i] = 1.f / std::sqrt(v[i]);  // exact: the Newton step keeps it
  return v;
#endif
}
#if FMR_WIDE
inline f8 rsqrt_estimate(f8 v) { return reinterpret_cast<f8>(_mm256_rsqrt_ps(reinterpret_cast<__m256>(v))); }
#endif
#if FMR_WIDE >= 2
// The maskz form with every lane set is the same instruction without GCC 12's false
// -Wmaybe-uninitialized on _mm512_rsqrt14_ps.
inline f16 rsqrt_estimate(f16 v) {
  return reinterpret_cast<f16>(_mm512_maskz_rsqrt14_ps(0xFFFF, reinterpret_cast<__m512>(v)));
}
#endif

// The constants of ada_step for learning rate eta: {1.5 eta, 0.5 eta} in every lane.
template <class T>
struct AdaRate {
  T e15, e05;
  explicit AdaRate(float eta) : e15(splat<T>(1.5f * eta)), e05(splat<T>(0.5f * eta)) {}
};

// The AdaGrad step w − eta g / sqrt(G) with 1/sqrt(G) taken as the estimate y refined by
// one Newton step, y (1.5 − 0.5 G y²), to ~2e-7 relative error. With eta folded into the Newton
// constants it is w − (g y)(1.5 eta − (0.5 eta G y) y): five multiply or FMA operations per chunk,
// not seven (the pair update's throughput is bound by them).
template <class T>
inline T ada_step(T w, T g, T G, const AdaRate<T>& e) {
  const T y = rsqrt_estimate(G);
  return w - (g * y) * (e.e15 - (e.e05 * G * y) * y);
}
