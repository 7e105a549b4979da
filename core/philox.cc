#include "core/philox.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>

namespace memtrain::core {

std::array<float, 4> NormalsFromBlock(const PhiloxCounter& bits) {
  std::array<float, 4> z;
  PhiloxNormals(bits.data(), z.data());
  return z;
}

float PhiloxUniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return UniformFromBits(PhiloxBlock(seed, stream, index / 4)[index % 4]);
}

float PhiloxNormal(uint64_t seed, uint64_t stream, uint64_t index) {
  return NormalsFromBlock(PhiloxBlock(seed, stream, index / 4))[index % 4];
}

namespace {

// Calls emit(i, value4) for every counter block overlapping [offset, offset + n).
template <typename BlockFn>
void FillBlocks(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset,
                BlockFn fn) {
  const int64_t n = static_cast<int64_t>(out.size());
  if (n == 0) return;
  const int64_t first = static_cast<int64_t>(offset / 4);
  const int64_t last = static_cast<int64_t>((offset + n - 1) / 4);
  float* dst = out.data();
#pragma omp parallel for schedule(static)
  for (int64_t b = first; b <= last; ++b) {
    std::array<float, 4> v = fn(PhiloxBlock(seed, stream, static_cast<uint64_t>(b)));
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = b * 4 + lane - static_cast<int64_t>(offset);
      if (i >= 0 && i < n) dst[i] = v[lane];
    }
  }
}

}  // namespace

void FillUniform(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset, float lo,
                 float hi) {
  FillBlocks(out, seed, stream, offset, [lo, hi](const PhiloxCounter& bits) {
    std::array<float, 4> v;
    for (int i = 0; i < 4; ++i) v[i] = lo + (hi - lo) * UniformFromBits(bits[i]);
    return v;
  });
}

namespace {

// The normals of counter blocks [first, first + kBatch) into z (4 per block, in element order),
// with the lanes in separate arrays so that every loop vectorises: the same operations as
// PhiloxBlockBits and PhiloxNormals (philox_math.h), so the same bits.
constexpr int kBatch = 16;
#ifdef __AVX2__
// hi and lo words of the eight 32 x 32 -> 64-bit products a[i] * m (even lanes, then odd ones).
inline void MulHiLo(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif

inline void NormalsBatch(uint64_t seed, uint64_t stream, uint64_t first, float* __restrict z) {
  alignas(32) uint32_t c[4][kBatch];
  const uint32_t k0_init = static_cast<uint32_t>(seed), k1_init = static_cast<uint32_t>(seed >> 32);
#ifdef __AVX2__
  // The ten rounds on eight counters at a time (gcc's own vectorisation of the loop below
  // reaches about half this speed); the same words.
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  for (int h = 0; h < kBatch; h += 8) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int i = 0; i < 8; ++i) {
      const uint64_t block = first + static_cast<uint64_t>(h + i);
      lo[i] = static_cast<uint32_t>(block);
      hi[i] = static_cast<uint32_t>(block >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stream)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(stream >> 32)));
    uint32_t k0 = k0_init, k1 = k1_init;
    for (int round = 0; round < 10; ++round) {
      __m256i h0, l0, h1, l1;
      MulHiLo(c0, m0, &h0, &l0);
      MulHiLo(c2, m1, &h1, &l1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(h1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(h0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = l1;
      c3 = l0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(&c[0][h]), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&c[1][h]), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&c[2][h]), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(&c[3][h]), c3);
  }
#else
#pragma omp simd
  for (int i = 0; i < kBatch; ++i) {
    const uint64_t block = first + static_cast<uint64_t>(i);
    c[0][i] = static_cast<uint32_t>(block);
    c[1][i] = static_cast<uint32_t>(block >> 32);
    c[2][i] = static_cast<uint32_t>(stream);
    c[3][i] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t k0 = k0_init, k1 = k1_init;
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int i = 0; i < kBatch; ++i) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c[0][i];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c[2][i];
      const uint32_t c0 = static_cast<uint32_t>(p1 >> 32) ^ c[1][i] ^ k0;
      const uint32_t c2 = static_cast<uint32_t>(p0 >> 32) ^ c[3][i] ^ k1;
      c[0][i] = c0;
      c[1][i] = static_cast<uint32_t>(p1);
      c[2][i] = c2;
      c[3][i] = static_cast<uint32_t>(p0);
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
#endif
  for (int pair = 0; pair < 2; ++pair) {
#pragma omp simd
    for (int i = 0; i < kBatch; ++i) {
      PhiloxBoxMuller(c[2 * pair][i], c[2 * pair + 1][i], &z[4 * i + 2 * pair],
                      &z[4 * i + 2 * pair + 1]);
    }
  }
}

// Calls emit(i, z) with the standard normal z of element offset + i, for i in [0, n): batches of
// whole counter blocks through NormalsBatch, in chunks over the OpenMP threads, the edges one
// element at a time. The result does not depend on the thread count.
template <typename Emit>
void ForNormals(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, Emit emit) {
  int64_t i = 0;
  for (; i < n && (offset + i) % 4 != 0; ++i) emit(i, PhiloxNormal(seed, stream, offset + i));
  const int64_t base = i, batches = (n - i) / (4 * kBatch);
  const uint64_t first = (offset + static_cast<uint64_t>(i)) / 4;
  constexpr int64_t kChunk = 64;  // batches per task
#pragma omp parallel for schedule(static) if (batches > 2 * kChunk)
  for (int64_t c = 0; c < batches; c += kChunk) {
    alignas(64) float z[4 * kBatch];
    for (int64_t b = c; b < std::min(c + kChunk, batches); ++b) {
      NormalsBatch(seed, stream, first + static_cast<uint64_t>(b) * kBatch, z);
      const int64_t at = base + b * 4 * kBatch;
#pragma omp simd
      for (int k = 0; k < 4 * kBatch; ++k) emit(at + k, z[k]);
    }
  }
  for (i = base + batches * 4 * kBatch; i < n; ++i) {
    emit(i, PhiloxNormal(seed, stream, offset + i));
  }
}

}  // namespace

void FillNormal(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset, float mean,
                float std) {
  float* y = out.data();
  // An explicit fma, as cuda::FillNormal: contraction must not decide the rounding.
  ForNormals(static_cast<int64_t>(out.size()), seed, stream, offset,
             [=](int64_t i, float z) { y[i] = std::fmaf(std, z, mean); });
}

void AddNormal(float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
               float scale) {
  ForNormals(n, seed, stream, offset,
             [=](int64_t i, float z) { y[i] = std::fmaf(scale, z, x[i]); });
}

}  // namespace memtrain::core
