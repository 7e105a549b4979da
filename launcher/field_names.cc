#include "launcher/field_names.h"

#include <cctype>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace memtrain::launcher {
namespace {

struct Name {
  absl::string_view cpp, spec;
};
constexpr Name kNames[] = {
    {"AdamWConfig::lr", "optimizer.adamw.lr"},
    {"AdamWConfig::beta1", "optimizer.adamw.beta1"},
    {"AdamWConfig::beta2", "optimizer.adamw.beta2"},
    {"AdamWConfig::eps", "optimizer.adamw.eps"},
    {"AdamWConfig::weight_decay", "optimizer.adamw.weight_decay"},
    {"AdamWConfig::variant", "optimizer.adamw.variant"},
    {"LionConfig::lr", "optimizer.lion.lr"},
    {"LionConfig::beta1", "optimizer.lion.beta1"},
    {"LionConfig::beta2", "optimizer.lion.beta2"},
    {"LionConfig::weight_decay", "optimizer.lion.weight_decay"},
    {"LionConfig::direction", "optimizer.lion.k"},
    {"LionConfig::tau", "optimizer.lion.tau"},
    {"LionConfig::bf16_momentum", "optimizer.lion.momentum_dtype"},
    {"SgdConfig::lr", "optimizer.sgd.lr"},
    {"SgdConfig::momentum", "optimizer.sgd.momentum"},
    {"SgdConfig::dampening", "optimizer.sgd.dampening"},
    {"SgdConfig::weight_decay", "optimizer.sgd.weight_decay"},
    {"SgdConfig::nesterov", "optimizer.sgd.nesterov"},
    {"ZoConfig::lr", "optimizer.zo.lr"},
    {"ZoConfig::eps", "optimizer.zo.eps"},
    {"ZoConfig::weight_decay", "optimizer.zo.weight_decay"},
    {"ZoConfig::samples", "optimizer.zo.samples"},
    {"GPT2Config::max_seq_len", "model.gpt.max_seq_len"},
    {"GPT2Config::vocab_size", "model.gpt.vocab_size"},
    {"GPT2Config::padded_vocab_size", "model.gpt.padded_vocab_size"},
    {"GPT2Config::n_layer", "model.gpt.n_layer"},
    {"GPT2Config::n_head", "model.gpt.n_head"},
    {"GPT2Config::n_embd", "model.gpt.n_embd"},
    {"StreamerOptions::ssd_path", "offload.ssd_path"},
    {"StreamerOptions::resident_blocks", "offload.resident_blocks"},
    {"StreamerOptions::swap_batch", "offload.swap_batch"},
    {"StreamerOptions::prefetch_depth", "offload.prefetch_depth"},
    {"StreamerOptions::queue_depth", "offload.queue_depth"},
    // The job spec gives MiB (offload.piece_mib); the streamer's message gives the bytes.
    {"StreamerOptions::piece_bytes", "offload.piece_mib"},
    {"CnnConfig::layers", "model.cnn.layers"},
    {"CnnConfig::in_channels", "model.cnn.in_channels"},
    {"CnnConfig::height", "model.cnn.height"},
    {"CnnConfig::width", "model.cnn.width"},
    {"CnnConfig::num_classes", "model.cnn.num_classes"},
    {"PruneOptions::method", "federated.pruning.method"},
    {"PruneOptions::density", "federated.pruning.density"},
    {"PruneOptions::candidates", "federated.pruning.candidates"},
    {"PruneOptions::bn_batches", "federated.pruning.bn_batches"},
    {"PruneOptions::adjust_rounds", "federated.pruning.adjust_rounds"},
    {"PruneOptions::initial_rate", "federated.pruning.initial_rate"},
    {"PruneOptions::seed", "federated.seed"},
};

bool IsIdent(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Rewrites each maximal qualified name ("a::B::c", identifiers joined by "::") whose last two
// components are a known "Struct::field".
std::string Rewrite(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (!IsIdent(text[i])) {
      out.push_back(text[i++]);
      continue;
    }
    // A qualified name starts here: identifiers separated by "::".
    size_t end = i, last = i, prev = std::string::npos;
    while (true) {
      size_t j = end;
      while (j < text.size() && IsIdent(text[j])) ++j;
      end = j;
      if (end + 2 < text.size() && text.substr(end, 2) == "::" && IsIdent(text[end + 2])) {
        prev = last;
        last = end + 2;
        end += 2;
        continue;
      }
      break;
    }
    absl::string_view token = text.substr(i, end - i);
    absl::string_view spec;
    if (prev != std::string::npos) {
      const absl::string_view field = text.substr(prev, end - prev);
      for (const Name& n : kNames) {
        if (n.cpp == field) spec = n.spec;
      }
    }
    absl::StrAppend(&out, spec.empty() ? token : spec);
    i = end;
  }
  return out;
}

}  // namespace

absl::Status ToJobSpecNames(absl::Status status) {
  if (status.ok()) return status;
  std::string message = Rewrite(status.message());
  if (message == status.message()) return status;
  absl::Status out(status.code(), message);
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace memtrain::launcher
