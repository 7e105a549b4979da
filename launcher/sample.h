// Text generation from a GPT-2: byte-level (vocab_size 256: token = byte), or with the BPE
// vocabulary the token files were made with (make_tokens --bpe).
//
//   SampleOptions o{.prompt = "In the beginning", .tokens = 200};
//   MT_ASSIGN_OR_RETURN(std::string text, Sample(*model, o));
#ifndef MEMTRAIN_LAUNCHER_SAMPLE_H_
#define MEMTRAIN_LAUNCHER_SAMPLE_H_

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "core/bpe.h"
#include "core/model/gpt2.h"

namespace memtrain::launcher {

struct SampleOptions {
  std::string prompt = "\n";
  int tokens = 256;                  // bytes to generate
  float temperature = 0.8f;          // 0 = greedy
  int top_k = 0;                     // 0 = all tokens
  uint64_t seed = 1;                 // Philox seed of the draws
  const core::Bpe* vocab = nullptr;  // null: byte-level
  // When set, called with the text as it is produced: the prompt, then each generated token's
  // bytes as soon as it is drawn (the pieces concatenate to the returned text). Returning false
  // (e.g. the output was closed) stops the sampling with Aborted.
  std::function<bool(std::string_view)> on_text{};
};

// The prompt followed by the generated text. InvalidArgument if the model's vocabulary does not
// fit the decoding (256 without a BPE vocabulary; at least the vocabulary's size with one).
absl::StatusOr<std::string> Sample(core::GPT2& model, const SampleOptions& options);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_SAMPLE_H_
