// Text -> llm.c token files, byte-level (V = 256) or with a BPE vocabulary learned on the
// training part of the text. The last `val_fraction` of the text becomes the validation file.
//
//   make_tokens corpus.txt data/kjv [--val_fraction 0.1] [--bpe 1024]
//     -> data/kjv_train.bin, data/kjv_val.bin (and data/kjv_vocab.json with --bpe)
//   make_tokens fortunes.txt data/fortunes --vocab data/kjv_vocab.json
//     -> a second corpus in an existing vocabulary (to fine-tune a model trained with it)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/bpe.h"
#include "core/llmc.h"

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "make_tokens: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  double val_fraction = 0.1;
  int bpe_vocab = 0;
  std::string vocab_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--val_fraction" && i + 1 < argc) {
      if (!absl::SimpleAtod(argv[++i], &val_fraction) || !(val_fraction > 0 && val_fraction < 1)) {
        return Fail("--val_fraction must be in (0, 1)");
      }
    } else if (a == "--bpe" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &bpe_vocab) || bpe_vocab < 256 || bpe_vocab > 65536) {
        return Fail("--bpe takes a vocabulary size in [256, 65536]");
      }
    } else if (a == "--vocab" && i + 1 < argc) {
      vocab_path = argv[++i];
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 2) {
    return Fail(
        "usage: make_tokens input.txt out_prefix [--val_fraction F] "
        "[--bpe VOCAB_SIZE | --vocab existing_vocab.json]");
  }
  if (bpe_vocab > 0 && !vocab_path.empty()) {
    return Fail("--bpe learns a new vocabulary and --vocab uses an existing one: give one of them");
  }
  std::ifstream in(pos[0], std::ios::binary);
  if (!in) return Fail("cannot read " + pos[0]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t split = text.size() - static_cast<size_t>(text.size() * val_fraction);
  const std::string_view train(text.data(), split), val(text.data() + split, text.size() - split);
  const std::string prefix = pos[1];
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);

  std::vector<uint16_t> train_ids, val_ids;
  if (!vocab_path.empty()) {
    absl::StatusOr<memtrain::core::Bpe> bpe = memtrain::core::Bpe::Load(vocab_path);
    if (!bpe.ok()) return Fail(bpe.status().ToString());
    train_ids = bpe->Encode(train);
    val_ids = bpe->Encode(val);
    std::printf("encoded with %s (%d tokens); %.2f bytes per token\n", vocab_path.c_str(),
                bpe->vocab_size(),
                static_cast<double>(train.size()) / std::max<size_t>(1, train_ids.size()));
  } else if (bpe_vocab > 0) {
    absl::StatusOr<memtrain::core::Bpe> bpe = memtrain::core::Bpe::Train(train, bpe_vocab);
    if (!bpe.ok()) return Fail(bpe.status().ToString());
    if (absl::Status s = bpe->Save(prefix + "_vocab.json"); !s.ok()) return Fail(s.ToString());
    train_ids = bpe->Encode(train);
    val_ids = bpe->Encode(val);
    std::printf("wrote %s_vocab.json: %d tokens (%zu merges); %.2f bytes per token\n",
                prefix.c_str(), bpe->vocab_size(), static_cast<size_t>(bpe->vocab_size() - 256),
                static_cast<double>(train.size()) / std::max<size_t>(1, train_ids.size()));
  } else {
    for (unsigned char c : train) train_ids.push_back(c);
    for (unsigned char c : val) val_ids.push_back(c);
  }
  for (const auto& [path, ids] :
       {std::pair{prefix + "_train.bin", &train_ids}, std::pair{prefix + "_val.bin", &val_ids}}) {
    if (absl::Status s = memtrain::core::WriteTokenFile(path, *ids); !s.ok()) {
      return Fail(s.ToString());
    }
    std::printf("wrote %s: %zu tokens\n", path.c_str(), ids->size());
  }
  return 0;
}
