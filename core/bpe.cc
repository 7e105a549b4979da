#include "core/bpe.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace memtrain::core {
namespace {

enum class Kind { kLetter, kDigit, kSpace, kOther };

Kind KindOf(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return Kind::kLetter;
  if (c >= '0' && c <= '9') return Kind::kDigit;
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
    return Kind::kSpace;
  }
  return Kind::kOther;
}

uint64_t Key(int a, int b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

}  // namespace

std::vector<std::string_view> Bpe::Chunks(std::string_view text) {
  std::vector<std::string_view> out;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    size_t start = i;
    Kind k = KindOf(text[i]);
    // A single space joins the word that follows it (" the"), as in GPT-2.
    if (text[i] == ' ' && i + 1 < n && KindOf(text[i + 1]) != Kind::kSpace) {
      ++i;
      k = KindOf(text[i]);
    }
    while (i < n && KindOf(text[i]) == k) {
      // A run of spaces leaves its last space to the next word.
      if (k == Kind::kSpace && text[i] == ' ' && i + 1 < n && i > start &&
          KindOf(text[i + 1]) != Kind::kSpace) {
        break;
      }
      ++i;
    }
    out.push_back(text.substr(start, i - start));
  }
  return out;
}

absl::StatusOr<Bpe> Bpe::Train(std::string_view text, int vocab_size) {
  if (vocab_size < 256 || vocab_size > 65536) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BPE vocabulary size %d: must be in [256, 65536] (token ids are 16-bit)", vocab_size));
  }
  std::map<std::string_view, int64_t> counts;
  for (std::string_view c : Chunks(text)) ++counts[c];
  std::vector<std::vector<int>> words;
  std::vector<int64_t> freq;
  for (const auto& [chunk, count] : counts) {
    std::vector<int> w(chunk.begin(), chunk.end());
    for (int& x : w) x = static_cast<unsigned char>(x);
    if (w.size() >= 2) {
      words.push_back(std::move(w));
      freq.push_back(count);
    }
  }
  Bpe bpe;
  std::unordered_map<uint64_t, int64_t> pairs;
  while (bpe.vocab_size() < vocab_size) {
    pairs.clear();
    for (size_t w = 0; w < words.size(); ++w) {
      for (size_t i = 0; i + 1 < words[w].size(); ++i)
        pairs[Key(words[w][i], words[w][i + 1])] += freq[w];
    }
    uint64_t best = 0;
    int64_t best_count = 1;
    for (const auto& [key, count] : pairs) {
      if (count > best_count || (count == best_count && count > 1 && key < best)) {
        best = key;
        best_count = count;
      }
    }
    if (best_count < 2) break;  // nothing repeats: more merges would not shorten anything
    const int a = static_cast<int>(best >> 32), b = static_cast<int>(best & 0xffffffffu);
    const int id = bpe.vocab_size();
    bpe.merges_.emplace_back(a, b);
    for (std::vector<int>& w : words) {
      size_t out = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          w[out++] = id;
          ++i;
        } else {
          w[out++] = w[i];
        }
      }
      w.resize(out);
    }
  }
  bpe.Build();
  return bpe;
}

void Bpe::Build() {
  bytes_.assign(256, "");
  for (int i = 0; i < 256; ++i) bytes_[i] = std::string(1, static_cast<char>(i));
  rank_.clear();
  for (size_t k = 0; k < merges_.size(); ++k) {
    bytes_.push_back(bytes_[merges_[k].first] + bytes_[merges_[k].second]);
    rank_[Key(merges_[k].first, merges_[k].second)] = static_cast<int>(k);
  }
  cache_.clear();
}

void Bpe::EncodeChunk(std::string_view chunk, std::vector<uint16_t>* out) const {
  auto hit = cache_.find(std::string(chunk));
  if (hit != cache_.end()) {
    out->insert(out->end(), hit->second.begin(), hit->second.end());
    return;
  }
  std::vector<int> w(chunk.begin(), chunk.end());
  for (int& x : w) x = static_cast<unsigned char>(x);
  // Apply merges in the order they were learned: always the lowest-ranked adjacent pair first.
  for (;;) {
    int best_rank = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      auto it = rank_.find(Key(w[i], w[i + 1]));
      if (it != rank_.end() && (best_rank < 0 || it->second < best_rank)) {
        best_rank = it->second;
        at = i;
      }
    }
    if (best_rank < 0) break;
    w[at] = 256 + best_rank;
    w.erase(w.begin() + at + 1);
  }
  std::vector<uint16_t> ids(w.begin(), w.end());
  out->insert(out->end(), ids.begin(), ids.end());
  cache_.emplace(std::string(chunk), std::move(ids));
}

std::vector<uint16_t> Bpe::Encode(std::string_view text) const {
  std::vector<uint16_t> out;
  out.reserve(text.size() / 2);
  for (std::string_view c : Chunks(text)) EncodeChunk(c, &out);
  return out;
}

std::string Bpe::Decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) s += bytes_[id];
  }
  return s;
}

std::string Bpe::Decode(const std::vector<uint16_t>& ids) const {
  return Decode(std::vector<int32_t>(ids.begin(), ids.end()));
}

absl::Status Bpe::Save(const std::string& path) const {
  nlohmann::json j = {{"format", "memtrain-bpe/1"}, {"vocab_size", vocab_size()}};
  j["merges"] = nlohmann::json::array();
  for (const auto& [a, b] : merges_) j["merges"].push_back({a, b});
  const std::string text = j.dump() + "\n";
  return WriteFileAtomically(
      path, [&](std::FILE* f) { return WriteAll(f, text.data(), text.size(), path); });
}

absl::StatusOr<Bpe> Bpe::LoadUnguarded(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot read vocabulary %s", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrFormat("%s: not a memtrain BPE vocabulary: %s", path, why));
  };
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "memtrain-bpe/1") {
    return bad("missing or wrong \"format\"");
  }
  if (!j.contains("merges") || !j["merges"].is_array()) return bad("no \"merges\" array");
  Bpe bpe;
  for (const auto& m : j["merges"]) {
    const int next = bpe.vocab_size();
    if (!m.is_array() || m.size() != 2 || !m[0].is_number_integer() || !m[1].is_number_integer() ||
        m[0].get<int>() < 0 || m[0].get<int>() >= next || m[1].get<int>() < 0 ||
        m[1].get<int>() >= next) {
      return bad(absl::StrFormat("merge %d does not name two earlier tokens", next - 256));
    }
    bpe.merges_.emplace_back(m[0].get<int>(), m[1].get<int>());
  }
  if (bpe.vocab_size() > 65536) return bad("more than 65536 tokens");
  bpe.Build();
  return bpe;
}

absl::StatusOr<Bpe> Bpe::Load(const std::string& path) {
  try {
    return LoadUnguarded(path);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(
        absl::StrFormat("%s: not a memtrain BPE vocabulary: %s", path, e.what()));
  }
}

}  // namespace memtrain::core
