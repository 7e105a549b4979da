// llm.c checkpoint and token formats: round trips, and every kind of bad file refused with a
// status that names the file and what was wrong.
#include "core/llmc.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/data_loader.h"
#include "core/file_util.h"

namespace memtrain::core {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
}

GPT2Config Tiny() {
  return {.max_seq_len = 16,
          .vocab_size = 50,
          .padded_vocab_size = 64,
          .n_layer = 2,
          .n_head = 2,
          .n_embd = 8};
}

std::string ReadBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), bytes.size());
}

TEST(LlmcCheckpointTest, RoundTripIsExactAndLayoutIsLlmcs) {
  auto m = GPT2::Create(Tiny());
  ASSERT_TRUE(m.ok());
  (*m)->InitWeights(3);
  const std::string path = TempPath("rt.bin");
  ASSERT_TRUE(WriteLlmcCheckpoint(**m, path).ok());
  // File layout: header, then wte first, then wpe, then ln1w of layer 0, layer 1, ...
  std::string bytes = ReadBytes(path);
  const int32_t* h = reinterpret_cast<const int32_t*>(bytes.data());
  EXPECT_EQ(h[0], 20240326);
  EXPECT_EQ(h[1], 3);
  EXPECT_EQ(h[2], 16);
  EXPECT_EQ(h[3], 50);
  EXPECT_EQ(h[4], 2);
  EXPECT_EQ(h[5], 2);
  EXPECT_EQ(h[6], 8);
  EXPECT_EQ(h[7], 64);
  const float* data = reinterpret_cast<const float*>(bytes.data() + 1024);
  EXPECT_EQ(data[0], (*m)->block(0).param("wte").f32()[0]);
  const int64_t ln1w_at = 64 * 8 + 16 * 8;
  EXPECT_EQ(data[ln1w_at + 8], (*m)->block(2).param("ln1w").f32()[0]);  // layer 1's ln1w
  EXPECT_EQ(data[ln1w_at + 16 + 3], (*m)->block(1).param("ln1b").f32()[3]);

  auto loaded = LoadLlmcCheckpoint(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (int s = 0; s < (*m)->num_stages(); ++s) {
    const Tensor& a = (*m)->block(s).params();
    const Tensor& b = (*loaded)->block(s).params();
    ASSERT_EQ(a.numel(), b.numel());
    EXPECT_EQ(0, std::memcmp(a.raw(), b.raw(), a.nbytes())) << "stage " << s;
  }
}

TEST(LlmcCheckpointTest, BadFilesAreRefusedWithDataLoss) {
  auto m = GPT2::Create(Tiny());
  ASSERT_TRUE(m.ok());
  const std::string good = TempPath("good.bin");
  ASSERT_TRUE(WriteLlmcCheckpoint(**m, good).ok());
  const std::string bytes = ReadBytes(good);
  const std::string bad = TempPath("bad.bin");

  std::string magic = bytes;
  magic[0] ^= 1;
  WriteBytes(bad, magic);
  auto r = LoadLlmcCheckpoint(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find(bad), std::string::npos);
  EXPECT_NE(r.status().message().find("magic"), std::string::npos);

  std::string version = bytes;
  version[4] = 5;
  WriteBytes(bad, version);
  r = LoadLlmcCheckpoint(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("version 5"), std::string::npos);

  WriteBytes(bad, bytes.substr(0, bytes.size() - 4));
  r = LoadLlmcCheckpoint(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos);

  WriteBytes(bad, bytes.substr(0, 100));
  EXPECT_EQ(LoadLlmcCheckpoint(bad).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(LoadLlmcCheckpoint(TempPath("missing.bin")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(LlmcCheckpointTest, ConfigTheCheckpointCannotServeIsInvalidArgument) {
  auto m = GPT2::Create(Tiny());
  ASSERT_TRUE(m.ok());
  const std::string path = TempPath("cfg.bin");
  ASSERT_TRUE(WriteLlmcCheckpoint(**m, path).ok());
  GPT2Config want = Tiny();
  want.vocab_size = 51;
  auto r = LoadLlmcCheckpoint(path, &want);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("vocab_size"), std::string::npos);

  auto loaded = LoadLlmcCheckpoint(path);
  ASSERT_TRUE(loaded.ok());
  absl::Status s = (*loaded)->Prepare(2, 17);  // T > maxT = 16
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_seq_len"), std::string::npos);
}

TEST(LlmcTokensTest, RoundTripAndBadFiles) {
  std::vector<uint16_t> toks = {1, 2, 3, 65535, 7};
  const std::string path = TempPath("toks.bin");
  ASSERT_TRUE(WriteTokenFile(path, toks).ok());
  auto t = TokenFile::Open(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(std::vector<uint16_t>(t->tokens().begin(), t->tokens().end()), toks);
  absl::Status vocab = t->CheckVocab(50257);
  EXPECT_EQ(vocab.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(vocab.message().find("65535"), std::string::npos);

  const std::string bytes = ReadBytes(path);
  const std::string bad = TempPath("toks_bad.bin");
  WriteBytes(bad, bytes.substr(0, bytes.size() - 1));
  auto r = TokenFile::Open(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("1033 bytes"), std::string::npos);  // expected 1034
  std::string magic = bytes;
  magic[1] ^= 1;
  WriteBytes(bad, magic);
  EXPECT_EQ(TokenFile::Open(bad).status().code(), absl::StatusCode::kDataLoss);
}

TEST(DataLoaderTest, LlmcOrderAcrossRanksAndWrap) {
  std::vector<uint16_t> toks(100);
  for (int i = 0; i < 100; ++i) toks[i] = i;
  const std::string path = TempPath("dl.bin");
  ASSERT_TRUE(WriteTokenFile(path, toks).ok());
  auto t = TokenFile::Open(path);
  ASSERT_TRUE(t.ok());
  const int B = 2, T = 5, W = 3;
  for (int r = 0; r < W; ++r) {
    auto dl = DataLoader::Create(&*t, B, T, r, W);
    ASSERT_TRUE(dl.ok());
    // Starts (k*W + r)*10 for k = 0, 1, 2 need 11 tokens each: 80 + 11 <= 100, but k = 3 gives
    // 90 + r*10 + 11 > 100 for the last rank, so every rank wraps after 3 batches.
    EXPECT_EQ(dl->num_batches(), 3);
    std::vector<int32_t> in(B * T), tg(B * T);
    for (int s = 0; s < 5; ++s) {
      dl->Next(in.data(), tg.data());
      const int64_t start = (int64_t(s % 3) * W + r) * B * T;
      for (int i = 0; i < B * T; ++i) {
        ASSERT_EQ(in[i], start + i) << "rank " << r << " step " << s;
        ASSERT_EQ(tg[i], start + i + 1);
      }
    }
    // Seek reproduces the same batch as consuming that many.
    std::vector<int32_t> in2(B * T), tg2(B * T);
    auto again = DataLoader::Create(&*t, B, T, r, W).value();
    again.Seek(4);
    dl->Seek(4);
    dl->Next(in.data(), tg.data());
    again.Next(in2.data(), tg2.data());
    EXPECT_EQ(in, in2);
  }
  auto too_short = DataLoader::Create(&*t, 4, 25, 0, 1);  // needs 101 tokens
  EXPECT_EQ(too_short.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_short.status().message().find(path), std::string::npos);
}

TEST(DataLoaderTest, ShuffledWindowsAreAPermutationSharedByRanks) {
  std::vector<uint16_t> toks(241);
  for (int i = 0; i < 241; ++i) toks[i] = i;
  const std::string path = TempPath("dls.bin");
  ASSERT_TRUE(WriteTokenFile(path, toks).ok());
  auto t = TokenFile::Open(path).value();
  const int B = 2, T = 10, W = 2;  // 24 windows, 6 batches per rank per epoch
  std::vector<int> seen(24, 0);
  std::vector<int32_t> first_epoch;
  for (int r = 0; r < W; ++r) {
    auto dl = DataLoader::Create(&t, B, T, r, W, /*shuffle_seed=*/7).value();
    EXPECT_EQ(dl.num_batches(), 6);
    std::vector<int32_t> in(B * T), tg(B * T);
    for (int k = 0; k < 6; ++k) {
      dl.Next(in.data(), tg.data());
      for (int b = 0; b < B; ++b) {
        ASSERT_EQ(in[b * T] % T, 0);  // window starts
        for (int i = 0; i < T; ++i) {
          ASSERT_EQ(in[b * T + i], in[b * T] + i);
          ASSERT_EQ(tg[b * T + i], in[b * T] + i + 1);
        }
        ++seen[in[b * T] / T];
      }
      if (r == 0) first_epoch.insert(first_epoch.end(), in.begin(), in.end());
    }
  }
  for (int w = 0; w < 24; ++w) EXPECT_EQ(seen[w], 1) << "window " << w;  // each exactly once
  // A new epoch draws a new order; the same seed draws the same one.
  auto a = DataLoader::Create(&t, B, T, 0, W, 7).value();
  auto b = DataLoader::Create(&t, B, T, 0, W, 8).value();
  std::vector<int32_t> ia(B * T), ib(B * T), tg(B * T);
  a.Next(ia.data(), tg.data());
  b.Next(ib.data(), tg.data());
  EXPECT_TRUE(std::equal(ia.begin(), ia.end(), first_epoch.begin()));
  EXPECT_NE(ia, ib);
  a.Seek(6);
  a.Next(ia.data(), tg.data());
  EXPECT_FALSE(std::equal(ia.begin(), ia.end(), first_epoch.begin()));
}

}  // namespace
}  // namespace memtrain::core

namespace memtrain::core {
namespace {

TEST(FileUtilTest, FailedAtomicWriteLeavesTheOldFileAndNoTemporary) {
  const std::string path = TempPath("atomic.bin");
  WriteBytes(path, "old contents");
  absl::Status s = WriteFileAtomically(path, [](std::FILE* f) -> absl::Status {
    std::fputs("half of the new", f);
    return absl::UnavailableError("simulated failure mid-write");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ReadBytes(path), "old contents");
  EXPECT_FALSE(FileSize(absl::StrCat(path, ".tmp.", getpid())).ok());
  ASSERT_TRUE(
      WriteFileAtomically(path, [&](std::FILE* f) { return WriteAll(f, "new", 3, path); }).ok());
  EXPECT_EQ(ReadBytes(path), "new");
}

}  // namespace
}  // namespace memtrain::core
