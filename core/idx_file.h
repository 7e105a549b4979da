// IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic (0x00 0x00 type ndim), ndim
// big-endian int32 dimensions, then the elements in row-major order. Read whole into memory,
// gzip-compressed (zlib's gz* API) or plain, told apart by their content, not their name.
//
//   MT_ASSIGN_OR_RETURN(core::IdxArray images, core::ReadIdxFile("train-images-idx3-ubyte.gz"));
//   // images.dims == {60000, 28, 28}, images.data.size() == 60000 * 28 * 28
#ifndef MEMTRAIN_CORE_IDX_FILE_H_
#define MEMTRAIN_CORE_IDX_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace memtrain::core {

// The IDX element type codes (the third magic byte). Only kIdxUnsignedByte is read.
constexpr uint8_t kIdxUnsignedByte = 0x08;
constexpr uint8_t kIdxSignedByte = 0x09;
constexpr uint8_t kIdxInt16 = 0x0B;
constexpr uint8_t kIdxInt32 = 0x0C;
constexpr uint8_t kIdxFloat32 = 0x0D;
constexpr uint8_t kIdxFloat64 = 0x0E;

// Refused as absurd: more dimensions, or more elements, than these.
constexpr int kIdxMaxDims = 16;
constexpr int64_t kIdxMaxElements = int64_t{1} << 34;  // 16 GiB of bytes

// An IDX array of unsigned bytes.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // product(dims) elements, row-major

  int64_t NumElements() const { return static_cast<int64_t>(data.size()); }
};

// Reads an IDX file of type 0x08 (unsigned byte), gzipped or plain. Errors name the file:
// NotFound if it cannot be opened; DataLoss for a wrong magic ("not an IDX file: magic ..."), a
// header or payload shorter than promised (with the expected and found byte counts), bytes after
// the payload, or a corrupt gzip stream; InvalidArgument for another element type or absurd
// dimensions (none, more than kIdxMaxDims, negative, or over kIdxMaxElements elements).
absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_IDX_FILE_H_
