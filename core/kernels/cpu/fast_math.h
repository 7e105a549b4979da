// exp and tanh written with plain arithmetic so the compiler vectorises them inside
// `#pragma omp simd` loops (glibc's expf/tanhf are scalar calls here). Cephes' expf polynomial:
// relative error about 2 ulp over the clamped range [-87.3, 88.7].
#ifndef MEMTRAIN_CORE_KERNELS_CPU_FAST_MATH_H_
#define MEMTRAIN_CORE_KERNELS_CPU_FAST_MATH_H_

#include <bit>
#include <cstdint>

namespace memtrain::core::cpu {

inline float FastExp(float x) {
  // Clamp with ternaries and round with the 1.5 * 2^23 trick, whose float bits then hold the
  // integer directly: calls to fmin/floor and float->int conversions block gcc's vectoriser here.
  // (The build's -fno-trapping-math lets gcc if-convert the clamps.)
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;  // x * log2(e) rounded to the nearest integer
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (std::bit_cast<int32_t>(t) - 0x4B400000 + 127) << 23;  // 2^n
  return p * std::bit_cast<float>(bits);
}

inline float FastTanh(float x) { return 1.0f - 2.0f / (FastExp(2.0f * x) + 1.0f); }

}  // namespace memtrain::core::cpu

#endif  // MEMTRAIN_CORE_KERNELS_CPU_FAST_MATH_H_
