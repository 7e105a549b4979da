// Small file helpers: whole-file reads with clear errors, and atomic writes (temp file in the same
// folder, fsync, rename, fsync of the folder), so a kill at any moment leaves either the old file
// or the complete new one.
//
//   MT_RETURN_IF_ERROR(core::WriteFileAtomically(path, [&](std::FILE* f) -> absl::Status {
//     return core::WriteAll(f, data, bytes, path);
//   }));
#ifndef MEMTRAIN_CORE_FILE_UTIL_H_
#define MEMTRAIN_CORE_FILE_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace memtrain::core {

// Size in bytes; NotFound naming the file if it cannot be read.
absl::StatusOr<int64_t> FileSize(const std::string& path);

absl::Status ReadAll(std::FILE* f, void* data, size_t bytes, const std::string& path);
absl::Status WriteAll(std::FILE* f, const void* data, size_t bytes, const std::string& path);

// Runs `write` on a temporary file next to `path`, then makes it `path` atomically.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(std::FILE*)>& write);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_FILE_UTIL_H_
