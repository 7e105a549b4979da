#include "core/token_file.h"

#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/llmc_file.h"
#include "core/status.h"

namespace memtrain::core {

absl::StatusOr<TokenFile> TokenFile::Open(const std::string& path) {
  MT_ASSIGN_OR_RETURN(LlmcFile hf, OpenLlmcFile(path, kLlmcTokensMagic, "token file"));
  const int32_t* h = hf.header;
  const int64_t size = hf.size;
  if (h[1] != kLlmcTokensVersion) {
    return absl::DataLossError(
        absl::StrFormat("%s: token file version %d, expected %d", path, h[1], kLlmcTokensVersion));
  }
  const int64_t ntok = h[2];
  if (ntok < 0 || size != kLlmcHeaderBytes + 2 * ntok) {
    return absl::DataLossError(absl::StrFormat(
        "%s: header says %d tokens, so the file should be %d bytes, but it is %d bytes; the file "
        "is truncated or corrupt: regenerate it",
        path, ntok, kLlmcHeaderBytes + 2 * ntok, size));
  }
  TokenFile t;
  t.path_ = path;
  t.tokens_.resize(ntok);
  MT_RETURN_IF_ERROR(ReadAll(hf.file.get(), t.tokens_.data(), 2 * ntok, path));
  return t;
}

absl::Status TokenFile::CheckVocab(int vocab_size) const {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: token %d at index %d is outside the model's vocabulary (vocab_size = %d); the "
          "file was tokenised for another vocabulary",
          path_, tokens_[i], i, vocab_size));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteTokenFile(const std::string& path, absl::Span<const uint16_t> tokens) {
  if (tokens.size() > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d tokens do not fit the llm.c header", path, tokens.size()));
  }
  int32_t h[kLlmcHeaderInts] = {};
  h[0] = kLlmcTokensMagic;
  h[1] = kLlmcTokensVersion;
  h[2] = static_cast<int32_t>(tokens.size());
  return WriteFileAtomically(path, [&](std::FILE* f) -> absl::Status {
    MT_RETURN_IF_ERROR(WriteAll(f, h, sizeof(h), path));
    return WriteAll(f, tokens.data(), tokens.size() * 2, path);
  });
}

}  // namespace memtrain::core
