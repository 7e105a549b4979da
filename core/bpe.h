// A byte-level BPE tokenizer: tokens 0..255 are bytes, token 256 + k is merge k. Text is first cut
// into chunks (an optional leading space plus a run of letters, a run of digits, a run of other
// symbols, or a run of whitespace; bytes >= 0x80 count as letters so UTF-8 stays together), and
// merges never cross chunks. Training counts pairs weighted by chunk frequency and merges the most
// frequent pair (ties: the smallest pair) until the vocabulary is full. Any byte string encodes
// and decodes back exactly.
//
//   MT_ASSIGN_OR_RETURN(core::Bpe bpe, core::Bpe::Train(text, /*vocab_size=*/1024));
//   std::vector<uint16_t> ids = bpe.Encode("In the beginning");
//   std::string back = bpe.Decode(ids);
//   MT_RETURN_IF_ERROR(bpe.Save("data/kjv_vocab.json"));
#ifndef MEMTRAIN_CORE_BPE_H_
#define MEMTRAIN_CORE_BPE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace memtrain::core {

class Bpe {
 public:
  // InvalidArgument unless 256 <= vocab_size <= 65536 (token ids are uint16 in llm.c files).
  // Training may stop early (fewer merges) when no pair occurs twice.
  static absl::StatusOr<Bpe> Train(std::string_view text, int vocab_size);
  // DataLoss naming the file if it is not a vocabulary written by Save.
  static absl::StatusOr<Bpe> Load(const std::string& path);
  absl::Status Save(const std::string& path) const;

  int vocab_size() const { return 256 + static_cast<int>(merges_.size()); }
  std::vector<uint16_t> Encode(std::string_view text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  std::string Decode(const std::vector<uint16_t>& ids) const;
  const std::string& TokenBytes(int id) const { return bytes_[id]; }

  // The chunks merges stay within (exposed for tests).
  static std::vector<std::string_view> Chunks(std::string_view text);

 private:
  static absl::StatusOr<Bpe> LoadUnguarded(const std::string& path);
  void Build();  // rank_ and bytes_ from merges_
  void EncodeChunk(std::string_view chunk, std::vector<uint16_t>* out) const;

  std::vector<std::pair<int, int>> merges_;  // merge k makes token 256 + k
  std::vector<std::string> bytes_;           // token -> bytes
  std::unordered_map<uint64_t, int> rank_;   // (a << 32 | b) -> merge index
  mutable std::unordered_map<std::string, std::vector<uint16_t>> cache_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_BPE_H_
