#include "launcher/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/engine.h"
#include "core/philox.h"

namespace memtrain::launcher {

absl::StatusOr<std::string> Sample(core::GPT2& model, const SampleOptions& o) {
  const core::GPT2Config& c = model.config();
  std::vector<int32_t> ctx;
  if (o.vocab == nullptr) {
    if (c.vocab_size != 256) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "this model has vocab_size %d: give the BPE vocabulary its data was made with "
          "(--vocab data/NAME_vocab.json)",
          c.vocab_size));
    }
    for (unsigned char ch : o.prompt) ctx.push_back(ch);
  } else {
    if (o.vocab->vocab_size() > c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the vocabulary has %d tokens but the model only %d; use the vocabulary the model was "
          "trained with",
          o.vocab->vocab_size(), c.vocab_size));
    }
    for (uint16_t id : o.vocab->Encode(o.prompt)) ctx.push_back(id);
  }
  if (ctx.empty()) ctx.push_back('\n');
  const int vocab = o.vocab ? o.vocab->vocab_size() : 256;  // never sample an undecodable id
  // One fixed window: causal attention makes the logits at position i depend on tokens <= i only,
  // so the unused tail of the window can hold anything.
  const int T = std::min<int>(c.max_seq_len, static_cast<int>(ctx.size()) + o.tokens);
  MT_RETURN_IF_ERROR(model.Prepare({.B = 1, .T = T, .mode = core::ModelMode::kEval}));
  core::Engine engine(&model);
  std::vector<int32_t> window(T, 0);
  std::string out = o.prompt;
  std::vector<float> probs(vocab);
  std::vector<int> order(vocab);
  std::vector<int32_t> generated;
  auto emit = [&](std::string_view piece) -> absl::Status {
    if (!o.on_text || o.on_text(piece)) return absl::OkStatus();
    return absl::AbortedError(absl::StrFormat(
        "sampling stopped after %d token(s): the text could not be passed on", generated.size()));
  };
  MT_RETURN_IF_ERROR(emit(out));
  for (int n = 0; n < o.tokens; ++n) {
    const int len = std::min<int>(T, static_cast<int>(ctx.size()));
    std::copy(ctx.end() - len, ctx.end(), window.begin());
    MT_RETURN_IF_ERROR(engine.Forward({window.data(), nullptr, 1, T}, core::Pass::kEvalForward));
    const float* logits =
        model.logits().f32() + static_cast<int64_t>(len - 1) * c.padded_vocab_size;
    int next = 0;
    if (o.temperature <= 0.0f) {
      next = static_cast<int>(std::max_element(logits, logits + vocab) - logits);
    } else {
      std::iota(order.begin(), order.end(), 0);
      const int k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int a, int b) { return logits[a] > logits[b]; });
      const float mx = logits[order[0]];
      double sum = 0;
      for (int i = 0; i < k; ++i)
        sum += probs[i] = std::exp((logits[order[i]] - mx) / o.temperature);
      double u = core::PhiloxUniform(o.seed, 0, n) * sum;
      next = order[k - 1];
      for (int i = 0; i < k; ++i) {
        if ((u -= probs[i]) < 0) {
          next = order[i];
          break;
        }
      }
    }
    ctx.push_back(next);
    generated.push_back(next);
    const char byte = static_cast<char>(next);
    MT_RETURN_IF_ERROR(emit(o.vocab != nullptr ? std::string_view(o.vocab->TokenBytes(next))
                                               : std::string_view(&byte, 1)));
  }
  if (o.vocab != nullptr) return out + o.vocab->Decode(generated);
  for (int32_t id : generated) out.push_back(static_cast<char>(id));
  return out;
}

}  // namespace memtrain::launcher
