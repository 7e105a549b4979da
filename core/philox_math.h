// Philox4x32-10 and its Box-Muller normals as header code for both g++ and nvcc, so that
// core::FillNormal (core/philox.cc) and cuda::FillNormal (core/kernels/cuda/philox.cu) give the
// same bits. core/philox.h is the API; include this file directly only from a CUDA kernel.
//
//   uint32_t bits[4];
//   PhiloxBlockBits(seed, stream, index / 4, bits);
//   float z[4];
//   PhiloxNormals(bits, z);  // z[index % 4] == core::PhiloxNormal(seed, stream, index)
//
// Bit identity: libm's log/sin/cos and CUDA's differ in the last bit, so the normals use their own
// polynomials, in double, built only from operations IEEE 754 rounds exactly on both compilers:
// + - * / sqrt, fma() and conversions. No product feeds an addition except through an explicit
// fma(), so whether a compiler contracts multiply-adds (gcc's -ffp-contract, nvcc's -fmad) cannot
// change a result. Double keeps the polynomial and rounding errors near 1e-15, so each normal is
// the double-precision Box-Muller value correctly rounded to float except in rare near-ties.
#ifndef MEMTRAIN_CORE_PHILOX_MATH_H_
#define MEMTRAIN_CORE_PHILOX_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define MT_HOST_DEVICE __host__ __device__
#else
#define MT_HOST_DEVICE
#endif

namespace memtrain::core {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// The ten rounds on counter c (in place) with key (k0, k1).
MT_HOST_DEVICE inline void PhiloxRounds(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c[2];
    const uint32_t c0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t c2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[0] = c0;
    c[1] = static_cast<uint32_t>(p1);
    c[2] = c2;
    c[3] = static_cast<uint32_t>(p0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four raw words of counter block `block` (= index / 4) of (seed, stream).
MT_HOST_DEVICE inline void PhiloxBlockBits(uint64_t seed, uint64_t stream, uint64_t block,
                                           uint32_t out[4]) {
  out[0] = static_cast<uint32_t>(block);
  out[1] = static_cast<uint32_t>(block >> 32);
  out[2] = static_cast<uint32_t>(stream);
  out[3] = static_cast<uint32_t>(stream >> 32);
  PhiloxRounds(out, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

MT_HOST_DEVICE inline uint32_t PhiloxFloatBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

MT_HOST_DEVICE inline float PhiloxBitsFloat(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Natural log of a positive normal float. x = 2^e * m with m in [sqrt(1/2), sqrt(2)), taken
// from the bits (not frexp, whose implementations need not agree); log m = 2 atanh(s) with
// s = (m - 1) / (m + 1), |s| < 0.1716, whose odd series to s^17 leaves under 1e-15 relative.
MT_HOST_DEVICE inline double PhiloxLog(float x) {
  const uint32_t bits = PhiloxFloatBits(x);
  const uint32_t mant = bits & 0x7fffffu;
  const bool halve = mant > 0x3504f3u;  // 0x3fb504f3 is the last float below sqrt(2)
  const int e = static_cast<int>(bits >> 23) - 127 + (halve ? 1 : 0);
  const double m = PhiloxBitsFloat(mant | (halve ? 0x3f000000u : 0x3f800000u));
  const double f = m - 1.0;        // exact (Sterbenz)
  const double s = f / (2.0 + f);  // 2 + f is exact: m has 24 significant bits
  const double z = s * s;
  double p = 1.0 / 17;
  p = fma(p, z, 1.0 / 15);
  p = fma(p, z, 1.0 / 13);
  p = fma(p, z, 1.0 / 11);
  p = fma(p, z, 1.0 / 9);
  p = fma(p, z, 1.0 / 7);
  p = fma(p, z, 1.0 / 5);
  p = fma(p, z, 1.0 / 3);
  const double s2 = 2.0 * s;
  const double log_m = fma(s2 * z, p, s2);  // 2s + 2s^3 p(s^2)
  return fma(static_cast<double>(e), 0.69314718055994530942, log_m);
}

// cos and sin of 2 pi j / 2^24 for j in [0, 2^24). The angle is split exactly into the nearest
// quarter turn k and a remainder |jr| <= 2^21 (|theta| <= pi/4), so no large argument is ever
// rounded; Taylor series to theta^15 / theta^16 then leave under 1e-14.
MT_HOST_DEVICE inline void PhiloxCosSin2Pi(uint32_t j, double* cos_out, double* sin_out) {
  const uint32_t k = (j + (1u << 21)) >> 22;  // 0..4
  const int32_t jr = static_cast<int32_t>(j) - static_cast<int32_t>(k << 22);
  const double theta = static_cast<double>(jr) * (6.283185307179586476925 / 16777216.0);
  const double z = theta * theta;
  double ps = -1.0 / 1307674368000.0;  // -1/15!
  ps = fma(ps, z, 1.0 / 6227020800.0);
  ps = fma(ps, z, -1.0 / 39916800.0);
  ps = fma(ps, z, 1.0 / 362880.0);
  ps = fma(ps, z, -1.0 / 5040.0);
  ps = fma(ps, z, 1.0 / 120.0);
  ps = fma(ps, z, -1.0 / 6.0);
  const double sn = fma(theta * z, ps, theta);
  double pc = 1.0 / 20922789888000.0;  // 1/16!
  pc = fma(pc, z, -1.0 / 87178291200.0);
  pc = fma(pc, z, 1.0 / 479001600.0);
  pc = fma(pc, z, -1.0 / 3628800.0);
  pc = fma(pc, z, 1.0 / 40320.0);
  pc = fma(pc, z, -1.0 / 720.0);
  pc = fma(pc, z, 1.0 / 24.0);
  pc = fma(pc, z, -1.0 / 2.0);
  const double cs = fma(z, pc, 1.0);
  // Rotate by k quarter turns (selects, not a switch, so that a CPU loop over lanes vectorises).
  const uint32_t q = k & 3u;
  *cos_out = q == 0 ? cs : q == 1 ? -sn : q == 2 ? -cs : sn;
  *sin_out = q == 0 ? sn : q == 1 ? cs : q == 2 ? -sn : -cs;
}

// One Box-Muller pair from two raw words: u1 = ((wa >> 8) + 1) / 2^24 in (0, 1], so log(u1) is
// finite; the angle is 2 pi (wb >> 8) / 2^24.
MT_HOST_DEVICE inline void PhiloxBoxMuller(uint32_t wa, uint32_t wb, float* za, float* zb) {
  // Exact: an integer in [1, 2^24] times a power of two.
  const float u1 = static_cast<float>((wa >> 8) + 1u) * 0x1.0p-24f;
  const double r = sqrt(-2.0 * PhiloxLog(u1));
  double c, s;
  PhiloxCosSin2Pi(wb >> 8, &c, &s);
  *za = static_cast<float>(r * c);
  *zb = static_cast<float>(r * s);
}

// Standard normals for the four lanes of one counter block: two Box-Muller pairs, lanes (0, 1)
// from words (0, 1) and lanes (2, 3) from words (2, 3).
MT_HOST_DEVICE inline void PhiloxNormals(const uint32_t bits[4], float z[4]) {
  PhiloxBoxMuller(bits[0], bits[1], &z[0], &z[1]);
  PhiloxBoxMuller(bits[2], bits[3], &z[2], &z[3]);
}

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_PHILOX_MATH_H_
