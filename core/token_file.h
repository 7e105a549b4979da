// Token files in llm.c's format (a 256-int header, then uint16 token ids), read whole into memory.
// Data loading depends on this file only, not on any model.
//
//   MT_ASSIGN_OR_RETURN(core::TokenFile toks, core::TokenFile::Open("train.bin"));
//   MT_RETURN_IF_ERROR(toks.CheckVocab(model->config().vocab_size));
#ifndef MEMTRAIN_CORE_TOKEN_FILE_H_
#define MEMTRAIN_CORE_TOKEN_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace memtrain::core {

// A whole token file in memory.
class TokenFile {
 public:
  static absl::StatusOr<TokenFile> Open(const std::string& path);
  const std::string& path() const { return path_; }
  absl::Span<const uint16_t> tokens() const { return tokens_; }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  // InvalidArgument naming the file and the first offending token if any id >= vocab_size.
  absl::Status CheckVocab(int vocab_size) const;

 private:
  std::string path_;
  std::vector<uint16_t> tokens_;
};

absl::Status WriteTokenFile(const std::string& path, absl::Span<const uint16_t> tokens);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_TOKEN_FILE_H_
