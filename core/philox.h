// Philox4x32-10, a counter-based generator (Salmon et al., SC'11): every random number is a pure
// function of (seed, stream, index), so the same values come out on any rank, device, thread
// count, slice or block order. memtrain keys it by the 64-bit seed; the 128-bit counter holds
// (index / 4, stream). Element `index` of a stream is lane index % 4 of counter index / 4.
//
//   float z = core::PhiloxNormal(seed, /*stream=*/block_id, /*index=*/i);
//   core::FillNormal(absl::MakeSpan(w, n), seed, block_id, /*offset=*/0, 0.0f, 0.02f);
#ifndef MEMTRAIN_CORE_PHILOX_H_
#define MEMTRAIN_CORE_PHILOX_H_

#include <array>
#include <cstdint>

#include "absl/types/span.h"
#include "core/philox_math.h"

namespace memtrain::core {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// The rounds and the normals live in core/philox_math.h, shared with the CUDA kernels.
inline PhiloxCounter Philox4x32_10(PhiloxCounter c, PhiloxKey k) {
  PhiloxRounds(c.data(), k[0], k[1]);
  return c;
}

// The four raw words for counter block `block` (= index / 4) of (seed, stream).
inline PhiloxCounter PhiloxBlock(uint64_t seed, uint64_t stream, uint64_t block) {
  PhiloxCounter c;
  PhiloxBlockBits(seed, stream, block, c.data());
  return c;
}

// [0, 1) with 24 random bits.
inline float UniformFromBits(uint32_t x) { return static_cast<float>(x >> 8) * 0x1.0p-24f; }

// Standard normals for the four lanes of one counter block (two Box-Muller pairs), bit for bit
// those of cuda::FillNormal.
std::array<float, 4> NormalsFromBlock(const PhiloxCounter& bits);

float PhiloxUniform(uint64_t seed, uint64_t stream, uint64_t index);
float PhiloxNormal(uint64_t seed, uint64_t stream, uint64_t index);

// out[i] = element (offset + i) of the stream. Parallel over OpenMP threads; the result does not
// depend on the thread count.
void FillUniform(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset,
                 float lo = 0.0f, float hi = 1.0f);
void FillNormal(absl::Span<float> out, uint64_t seed, uint64_t stream, uint64_t offset,
                float mean = 0.0f, float std = 1.0f);
// y[i] = x[i] + scale * z (one rounding: fmaf) with z element offset + i of the stream's normals;
// y may be x. Bit for bit cuda::AddNormal. Zeroth-order steps perturb and update with it.
void AddNormal(float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
               float scale);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_PHILOX_H_
