// Byte-level tokenizer: turns a text file into llm.c token files (one token per byte, V = 256),
// the last `val_fraction` of the text going to the validation file.
//
//   make_tokens corpus.txt data/kjv [--val_fraction 0.1]   -> data/kjv_train.bin, data/kjv_val.bin
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/llmc.h"

int main(int argc, char** argv) {
  if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--val_fraction")) {
    std::fprintf(stderr, "usage: %s input.txt out_prefix [--val_fraction F]\n", argv[0]);
    return 2;
  }
  double val_fraction = argc == 5 ? std::stod(argv[4]) : 0.1;
  if (!(val_fraction > 0.0 && val_fraction < 1.0)) {
    std::fprintf(stderr, "--val_fraction = %s: must be in (0, 1)\n", argv[4]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<uint16_t> tokens(text.begin(), text.end());
  for (size_t i = 0; i < text.size(); ++i) tokens[i] = static_cast<unsigned char>(text[i]);
  const size_t n_val = static_cast<size_t>(tokens.size() * val_fraction);
  const size_t n_train = tokens.size() - n_val;
  const std::string prefix = argv[2];
  std::filesystem::path parent = std::filesystem::path(prefix).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  absl::Span<const uint16_t> all(tokens);
  for (auto [path, span] : {std::pair{prefix + "_train.bin", all.subspan(0, n_train)},
                            std::pair{prefix + "_val.bin", all.subspan(n_train)}}) {
    if (absl::Status s = memtrain::core::WriteTokenFile(path, span); !s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("wrote %s: %zu tokens\n", path.c_str(), span.size());
  }
  return 0;
}
