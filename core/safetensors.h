// safetensors files (the format PyTorch users load with safetensors.torch.load_file): an 8-byte
// little-endian header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets"},
// "__metadata__": {string: string}}, then the raw little-endian data.
//
//   MT_RETURN_IF_ERROR(core::WriteSafetensors(path, {{"h.0.qkvw", t}}, {{"step", "10"}}));
//   MT_ASSIGN_OR_RETURN(core::SafetensorsFile f, core::SafetensorsFile::Read(path));
//   MT_RETURN_IF_ERROR(f.CopyTo("h.0.qkvw", t));   // checks dtype and shape
#ifndef MEMTRAIN_CORE_SAFETENSORS_H_
#define MEMTRAIN_CORE_SAFETENSORS_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace memtrain::core {

struct NamedTensor {
  std::string name;
  Tensor tensor;  // CPU, contiguous
};

// Size and CRC-32 (zlib's) of a whole file.
struct FileDigest {
  int64_t bytes = 0;
  uint32_t crc32 = 0;
};

// Writes atomically (temp file, fsync, rename); the digest is computed while writing.
absl::StatusOr<FileDigest> WriteSafetensors(
    const std::string& path, const std::vector<NamedTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

class SafetensorsFile {
 public:
  // Reads and checks the whole file: DataLoss naming the file on a bad header, offsets outside the
  // data, or a size that does not match dtype x shape.
  static absl::StatusOr<SafetensorsFile> Read(const std::string& path);

  struct Entry {
    DType dtype;
    Shape shape;
    int64_t begin = 0, end = 0;  // byte offsets into the data section
  };
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Copies tensor `name` into `dst`; NotFound / DataLoss (naming the file) if missing or if its
  // dtype or shape differ from dst's.
  absl::Status CopyTo(const std::string& name, const Tensor& dst) const;
  // Of the whole file as read.
  const FileDigest& digest() const { return digest_; }

 private:
  static absl::StatusOr<SafetensorsFile> ReadUnguarded(const std::string& path);

  std::string path_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::vector<char> data_;
  FileDigest digest_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_SAFETENSORS_H_
