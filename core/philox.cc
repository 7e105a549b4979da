#include "core/philox.h"

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

void FillNormal(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset, float mean,
                float std) {
  FillBlocks(out, seed, stream, offset, [mean, std](const PhiloxCounter& bits) {
    std::array<float, 4> v = NormalsFromBlock(bits);
    // An explicit fma, as cuda::FillNormal: contraction must not decide the rounding.
    for (float& x : v) x = std::fmaf(std, x, mean);
    return v;
  });
}

}  // namespace memtrain::core
