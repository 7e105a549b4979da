#include "core/idx_file.h"

#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace memtrain::core {
namespace {

struct GzCloser {
  void operator()(gzFile f) const {
    if (f) gzclose(f);
  }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

const char* IdxTypeName(uint8_t type) {
  switch (type) {
    case kIdxUnsignedByte:
      return "unsigned byte";
    case kIdxSignedByte:
      return "signed byte";
    case kIdxInt16:
      return "int16";
    case kIdxInt32:
      return "int32";
    case kIdxFloat32:
      return "float32";
    case kIdxFloat64:
      return "float64";
    default:
      return "unknown";
  }
}

// Reads up to `bytes` bytes; returns how many were read (fewer only at the end of the data), or
// DataLoss naming the file on a read error or a corrupt gzip stream. A gzip stream cut short is
// not an error here: the caller sees fewer bytes and says what was expected.
absl::StatusOr<int64_t> GzReadUpTo(gzFile f, uint8_t* data, int64_t bytes,
                                   const std::string& path) {
  int64_t done = 0;
  while (done < bytes) {
    const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(bytes - done, 1 << 24));
    const int got = gzread(f, data + done, chunk);
    if (got < 0) {
      int err = Z_OK;
      const char* msg = gzerror(f, &err);
      if (err == Z_BUF_ERROR) break;  // truncated gzip stream: a short read
      std::string why = err == Z_ERRNO ? std::strerror(errno) : msg;
      if (why.rfind(path + ": ", 0) == 0) why = why.substr(path.size() + 2);  // zlib adds the path
      return absl::DataLossError(absl::StrFormat(
          "%s: cannot read: %s; the file is corrupt: download or reinstall it", path, why));
    }
    if (got == 0) break;
    done += got;
  }
  return done;
}

std::string DimsString(const std::vector<int64_t>& dims) { return absl::StrJoin(dims, "x"); }

}  // namespace

absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrFormat("cannot open IDX file %s: %s; check the path", path, std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrFormat("cannot open IDX file %s: it is a folder; check the path", path));
  }
  GzFile f(gzopen(path.c_str(), "rb"));
  if (!f) {
    return absl::NotFoundError(absl::StrFormat("cannot open IDX file %s: %s; check the path", path,
                                               errno ? std::strerror(errno) : "out of memory"));
  }
  gzbuffer(f.get(), 1 << 18);

  uint8_t magic[4];
  absl::StatusOr<int64_t> got = GzReadUpTo(f.get(), magic, 4, path);
  if (!got.ok()) return got.status();
  if (*got < 4) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not an IDX file: %d bytes, fewer than the 4-byte magic; the file is truncated: "
        "download or reinstall it",
        path, *got));
  }
  if (magic[0] != 0 || magic[1] != 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not an IDX file: magic %02x %02x %02x %02x, expected 00 00 <type> <ndim>; is this an "
        "MNIST-style images-idx or labels-idx file?",
        path, magic[0], magic[1], magic[2], magic[3]));
  }
  const uint8_t type = magic[2];
  const int ndim = magic[3];
  if (type != kIdxUnsignedByte) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: IDX element type 0x%02x (%s) is not supported: only unsigned byte (0x08) is read",
        path, type, IdxTypeName(type)));
  }
  if (ndim < 1 || ndim > kIdxMaxDims) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: IDX header gives %d dimensions, expected 1 to %d; the file is corrupt",
                        path, ndim, kIdxMaxDims));
  }

  uint8_t dim_bytes[4 * kIdxMaxDims];
  got = GzReadUpTo(f.get(), dim_bytes, 4 * ndim, path);
  if (!got.ok()) return got.status();
  if (*got < 4 * ndim) {
    return absl::DataLossError(absl::StrFormat(
        "%s: IDX header promises %d dimensions (%d bytes) but the file ends after %d of them; the "
        "file is truncated: download or reinstall it",
        path, ndim, 4 * ndim, *got));
  }
  IdxArray a;
  a.dims.resize(ndim);
  int64_t elements = 1;
  for (int i = 0; i < ndim; ++i) {
    const uint8_t* b = dim_bytes + 4 * i;
    const int32_t d = static_cast<int32_t>((uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) |
                                           (uint32_t{b[2]} << 8) | uint32_t{b[3]});
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: IDX dimension %d is %d, expected a size >= 0; the file is corrupt", path, i, d));
    }
    a.dims[i] = d;
    if (d > 0 && elements > kIdxMaxElements / d) {  // checked before multiplying: no overflow
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: IDX dimensions %s promise more than %d elements; the file is "
          "corrupt or not meant for memory",
          path, DimsString({a.dims.begin(), a.dims.begin() + i + 1}), kIdxMaxElements));
    }
    elements *= d;
  }

  // Grown as the bytes arrive, so a corrupt header cannot make a huge allocation by itself.
  int64_t have = 0;
  while (have < elements) {
    const int64_t want = std::min<int64_t>(elements - have, std::max<int64_t>(have, 1 << 20));
    a.data.resize(have + want);
    got = GzReadUpTo(f.get(), a.data.data() + have, want, path);
    if (!got.ok()) return got.status();
    have += *got;
    if (*got < want) break;
  }
  if (have < elements) {
    return absl::DataLossError(absl::StrFormat(
        "%s: IDX dimensions %s promise %d data bytes but the file holds only %d; the file is "
        "truncated: download or reinstall it",
        path, DimsString(a.dims), elements, have));
  }
  uint8_t extra[1];
  got = GzReadUpTo(f.get(), extra, 1, path);
  if (!got.ok()) return got.status();
  if (*got > 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: IDX dimensions %s promise %d data bytes but the file holds more (trailing garbage "
        "after byte %d of the payload); the file is corrupt: download or reinstall it",
        path, DimsString(a.dims), elements, elements));
  }
  return a;
}

}  // namespace memtrain::core
