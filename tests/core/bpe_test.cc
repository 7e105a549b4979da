// The BPE tokenizer: the textbook example step by step, exact round trips of arbitrary bytes,
// chunking, and vocabulary files.
#include "core/bpe.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

namespace memtrain::core {
namespace {

TEST(BpeTest, TextbookExampleMergesTheMostFrequentPairEachTime) {
  // aaabdaaabac: aa (4 overlapping occurrences) -> 256; then ab and (256, a) tie at 2 and the
  // smaller pair, ab, wins -> 257; then (256, 257) -> 258: "X d X a c".
  auto bpe = Bpe::Train("aaabdaaabac", 259);
  ASSERT_TRUE(bpe.ok()) << bpe.status();
  EXPECT_EQ(bpe->vocab_size(), 259);
  EXPECT_EQ(bpe->TokenBytes(256), "aa");
  EXPECT_EQ(bpe->TokenBytes(257), "ab");
  EXPECT_EQ(bpe->TokenBytes(258), "aaab");
  EXPECT_EQ(bpe->Encode("aaabdaaabac"), (std::vector<uint16_t>{258, 'd', 258, 'a', 'c'}));
  // Training stops when no pair repeats, below the requested size.
  EXPECT_EQ(Bpe::Train("aaabdaaabac", 1000)->vocab_size(), 259);
}

TEST(BpeTest, ChunksKeepWordsWithTheirLeadingSpace) {
  auto v = [](std::string_view s) {
    std::vector<std::string> out;
    for (std::string_view c : Bpe::Chunks(s)) out.emplace_back(c);
    return out;
  };
  EXPECT_EQ(v("In the beginning"), (std::vector<std::string>{"In", " the", " beginning"}));
  EXPECT_EQ(v("Gen1:1  God"), (std::vector<std::string>{"Gen", "1", ":", "1", " ", " God"}));
  EXPECT_EQ(v("a\n b"), (std::vector<std::string>{"a", "\n", " b"}));
  EXPECT_EQ(v("caf\xc3\xa9!"), (std::vector<std::string>{"caf\xc3\xa9", "!"}));
}

TEST(BpeTest, AnyBytesRoundTripExactly) {
  const std::string corpus =
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep.";
  auto bpe = Bpe::Train(corpus + corpus + corpus, 400);
  ASSERT_TRUE(bpe.ok());
  EXPECT_GT(bpe->vocab_size(), 256);
  EXPECT_LT(bpe->Encode(corpus).size(), corpus.size() / 2);  // it compresses what it saw
  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    std::string s(1 + rng() % 200, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);  // NULs, UTF-8 fragments, anything
    if (trial % 2) s += corpus.substr(rng() % 50, 40);
    EXPECT_EQ(bpe->Decode(bpe->Encode(s)), s) << "trial " << trial;
  }
  for (uint16_t id : bpe->Encode(corpus)) EXPECT_LT(id, bpe->vocab_size());
}

TEST(BpeTest, VocabularyFilesRoundTripAndBadOnesAreRefused) {
  auto bpe = Bpe::Train("the cat sat on the mat; the cat ate the rat", 280).value();
  const std::string path = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_vocab.json";
  ASSERT_TRUE(bpe.Save(path).ok());
  auto loaded = Bpe::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->vocab_size(), bpe.vocab_size());
  EXPECT_EQ(loaded->Encode("the rat sat"), bpe.Encode("the rat sat"));
  std::ofstream(path) << R"({"format": "memtrain-bpe/1", "merges": [[97, 98], [300, 97]]})";
  auto bad = Bpe::Load(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("merge 1"), std::string::npos) << bad.status();
  std::ofstream(path) << R"({"format": 1, "merges": []})";  // a number where a string goes
  EXPECT_EQ(Bpe::Load(path).status().code(), absl::StatusCode::kDataLoss);
  std::ofstream(path) << "not json";
  EXPECT_EQ(Bpe::Load(path).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Bpe::Train("abc", 100).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace memtrain::core
