// Element types of tensors and the fp32 <-> bf16 conversions (round to nearest even).
//
//   uint16_t h = core::FloatToBf16(1.5f);
//   float f = core::Bf16ToFloat(h);
#ifndef MEMTRAIN_CORE_DTYPE_H_
#define MEMTRAIN_CORE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace memtrain::core {

enum class DType : uint8_t { kF32, kBF16, kI32, kU16, kF64, kU8 };

constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kU16:
      return 2;
    case DType::kF64:
      return 8;
    case DType::kU8:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType t);

// Round-to-nearest-even; NaN stays NaN (quiet), infinities stay infinite.
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_DTYPE_H_
