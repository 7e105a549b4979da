// llm.c's file layout, shared by its checkpoints (core/llmc.h) and token files
// (core/token_file.h): a header of 256 int32 (magic, version, sizes) followed by the payload.
//
//   MT_ASSIGN_OR_RETURN(core::LlmcFile f, core::OpenLlmcFile(path, core::kLlmcTokensMagic, "token
//   file")); int32_t version = f.header[1];
#ifndef MEMTRAIN_CORE_LLMC_FILE_H_
#define MEMTRAIN_CORE_LLMC_FILE_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace memtrain::core {

constexpr int32_t kLlmcCheckpointMagic = 20240326;
constexpr int32_t kLlmcCheckpointVersionF32 = 3;
constexpr int32_t kLlmcTokensMagic = 20240520;
constexpr int32_t kLlmcTokensVersion = 1;

constexpr int kLlmcHeaderInts = 256;
constexpr int64_t kLlmcHeaderBytes = kLlmcHeaderInts * sizeof(int32_t);

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// NotFound naming the path if it cannot be opened.
absl::StatusOr<File> OpenForRead(const std::string& path);

// An open llm.c file with its header read and its magic number checked; `file` is positioned
// after the header.
struct LlmcFile {
  File file;
  int32_t header[kLlmcHeaderInts];
  int64_t size;  // bytes
};

// DataLoss naming the file if it is shorter than a header or the magic is not `magic`; `kind`
// names the expected content in the message ("token file", "checkpoint").
absl::StatusOr<LlmcFile> OpenLlmcFile(const std::string& path, int32_t magic, const char* kind);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_LLMC_FILE_H_
