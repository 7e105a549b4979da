#include "core/safetensors.h"

#include <cstring>
#include <fstream>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/file_util.h"
#include "nlohmann/json.hpp"
#include "zlib.h"

namespace memtrain::core {
namespace {

using Json = nlohmann::json;

const char* SafetensorsDType(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    case DType::kU16:
      return "U16";
    case DType::kF64:
      return "F64";
    case DType::kU8:
      return "U8";
  }
  return "?";
}

bool ParseDType(const std::string& s, DType* out) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kI32, DType::kU16, DType::kF64, DType::kU8}) {
    if (s == SafetensorsDType(t)) {
      *out = t;
      return true;
    }
  }
  return false;
}

// CRC-32 of a buffer of any size (zlib takes 32-bit lengths).
uint32_t Crc32Update(uint32_t crc, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  uLong c = crc;
  for (size_t off = 0; off < n;) {
    const size_t chunk = std::min<size_t>(n - off, size_t{1} << 30);
    c = crc32(c, reinterpret_cast<const Bytef*>(p + off), static_cast<uInt>(chunk));
    off += chunk;
  }
  return static_cast<uint32_t>(c);
}

}  // namespace

absl::StatusOr<FileDigest> WriteSafetensors(const std::string& path,
                                            const std::vector<NamedTensor>& tensors,
                                            const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  int64_t offset = 0;
  for (const NamedTensor& nt : tensors) {
    Json shape = Json::array();
    for (int64_t d : nt.tensor.shape()) shape.push_back(d);
    const int64_t bytes = static_cast<int64_t>(nt.tensor.nbytes());
    header[nt.name] = {{"dtype", SafetensorsDType(nt.tensor.dtype())},
                       {"shape", shape},
                       {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  const uint64_t n = text.size();
  FileDigest digest;
  digest.crc32 = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  auto put = [&](std::FILE* f, const void* data, size_t bytes) -> absl::Status {
    digest.crc32 = Crc32Update(digest.crc32, data, bytes);
    digest.bytes += static_cast<int64_t>(bytes);
    return WriteAll(f, data, bytes, path);
  };
  MT_RETURN_IF_ERROR(WriteFileAtomically(path, [&](std::FILE* f) -> absl::Status {
    MT_RETURN_IF_ERROR(put(f, &n, 8));
    MT_RETURN_IF_ERROR(put(f, text.data(), text.size()));
    std::vector<char> staging;  // a device tensor's bytes, read back to the host
    for (const NamedTensor& nt : tensors) {
      const Tensor& t = nt.tensor;
      if (t.device().type == DeviceType::kCpu) {
        MT_RETURN_IF_ERROR(put(f, t.raw(), t.nbytes()));
      } else {
        staging.resize(t.nbytes());
        BackendFor(t.device())
            .CopyToHost(ExecContext::For(t.device()), staging.data(), t.raw(), t.nbytes());
        MT_RETURN_IF_ERROR(put(f, staging.data(), staging.size()));
      }
    }
    return absl::OkStatus();
  }));
  return digest;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::ReadUnguarded(const std::string& path) {
  MT_ASSIGN_OR_RETURN(int64_t size, FileSize(path));
  auto bad = [&](const std::string& what) {
    return absl::DataLossError(absl::StrFormat("%s: not a valid safetensors file: %s", path, what));
  };
  if (size < 8) return bad(absl::StrFormat("%d bytes is shorter than the 8-byte header", size));
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  if (!in || n > static_cast<uint64_t>(size - 8)) {
    return bad(absl::StrFormat("header length %d exceeds the file size %d", n, size));
  }
  std::string text(n, '\0');
  in.read(text.data(), n);
  Json header = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return bad("the header is not a JSON object");
  SafetensorsFile f;
  f.path_ = path;
  const int64_t data_bytes = size - 8 - static_cast<int64_t>(n);
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return bad("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (m->is_string()) f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const Json& e = *it;
    Entry entry;
    if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() ||
        !ParseDType(e["dtype"].get<std::string>(), &entry.dtype) || !e.contains("shape") ||
        !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2) {
      return bad("entry " + it.key() + " lacks a supported dtype, a shape or data_offsets");
    }
    for (const Json& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("bad shape of " + it.key());
      entry.shape.push_back(d.get<int64_t>());
    }
    entry.begin = e["data_offsets"][0].get<int64_t>();
    entry.end = e["data_offsets"][1].get<int64_t>();
    const int64_t want = NumElements(entry.shape) * static_cast<int64_t>(DTypeSize(entry.dtype));
    if (entry.begin < 0 || entry.end < entry.begin || entry.end > data_bytes ||
        entry.end - entry.begin != want) {
      return bad(absl::StrFormat(
          "tensor %s has offsets [%d, %d) for %d bytes in a %d-byte data section (truncated?)",
          it.key(), entry.begin, entry.end, want, data_bytes));
    }
    f.entries_[it.key()] = entry;
  }
  f.data_.resize(data_bytes);
  in.read(f.data_.data(), data_bytes);
  if (!in) return bad("short read of the data section");
  uint32_t crc = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  crc = Crc32Update(crc, &n, 8);
  crc = Crc32Update(crc, text.data(), text.size());
  f.digest_ = {size, Crc32Update(crc, f.data_.data(), f.data_.size())};
  return f;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  try {
    return ReadUnguarded(path);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(
        absl::StrFormat("%s: not a valid safetensors file: malformed header (%s)", path, e.what()));
  }
}

absl::Status SafetensorsFile::CopyTo(const std::string& name, const Tensor& dst) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrFormat("%s has no tensor named %s", path_, name));
  }
  const Entry& e = it->second;
  if (e.dtype != dst.dtype() || e.shape != dst.shape()) {
    return absl::DataLossError(absl::StrFormat(
        "%s: tensor %s is %s %s but %s %s was expected", path_, name, DTypeName(e.dtype),
        ShapeString(e.shape), DTypeName(dst.dtype()), ShapeString(dst.shape())));
  }
  BackendFor(dst.device())
      .CopyFromHost(ExecContext::For(dst.device()), dst.raw(), data_.data() + e.begin,
                    e.end - e.begin);
  return absl::OkStatus();
}

}  // namespace memtrain::core
