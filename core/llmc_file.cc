#include "core/llmc_file.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status.h"

namespace memtrain::core {

absl::StatusOr<File> OpenForRead(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    return absl::NotFoundError(
        absl::StrFormat("cannot open %s: %s; check the path", path, std::strerror(errno)));
  }
  return f;
}

absl::StatusOr<LlmcFile> OpenLlmcFile(const std::string& path, int32_t magic, const char* kind) {
  LlmcFile hf;
  MT_ASSIGN_OR_RETURN(hf.size, FileSize(path));
  if (hf.size < kLlmcHeaderBytes) {
    return absl::DataLossError(
        absl::StrFormat("%s: %d bytes is too small for an llm.c %s (the header alone is %d bytes)",
                        path, hf.size, kind, kLlmcHeaderBytes));
  }
  MT_ASSIGN_OR_RETURN(hf.file, OpenForRead(path));
  MT_RETURN_IF_ERROR(ReadAll(hf.file.get(), hf.header, sizeof(hf.header), path));
  if (hf.header[0] != magic) {
    return absl::DataLossError(
        absl::StrFormat("%s: bad magic number: expected %d (llm.c %s), found %d; is this a %s?",
                        path, magic, kind, hf.header[0], kind));
  }
  return hf;
}

}  // namespace memtrain::core
