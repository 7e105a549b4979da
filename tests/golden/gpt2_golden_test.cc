// GPT-2 against an independent PyTorch (float64) implementation, see make_gpt2_golden.py:
// the llm.c checkpoint and token file it wrote are read with memtrain's readers, then logits,
// loss, every parameter gradient and 10 AdamW steps are compared.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "core/llmc.h"
#include "optim/adamw.h"
#include "tests/core/test_util.h"

namespace memtrain {
namespace {

using memtrain::testing::AllClose;

// MEMTRAIN_SOURCE_DIR in the environment overrides the build's source folder (for running the
// test binary on another machine).
const std::string kDir = absl::StrCat(
    std::getenv("MEMTRAIN_SOURCE_DIR") ? std::getenv("MEMTRAIN_SOURCE_DIR") : MEMTRAIN_SOURCE_DIR,
    "/tests/golden/data/");

// Reads the named-tensor file written by make_gpt2_golden.py.
std::map<std::string, std::vector<float>> ReadGolden(const std::string& path) {
  std::map<std::string, std::vector<float>> out;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  if (!f) return out;
  char magic[8];
  int32_t count = 0;
  EXPECT_EQ(std::fread(magic, 1, 8, f), 8u);
  EXPECT_EQ(std::string(magic, 7), "MTGOLD1");
  EXPECT_EQ(std::fread(&count, 4, 1, f), 1u);
  for (int i = 0; i < count; ++i) {
    int32_t len = 0, ndim = 0;
    EXPECT_EQ(std::fread(&len, 4, 1, f), 1u);
    std::string name(len, '\0');
    EXPECT_EQ(std::fread(name.data(), 1, len, f), size_t(len));
    EXPECT_EQ(std::fread(&ndim, 4, 1, f), 1u);
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) {
      int64_t dim = 0;
      EXPECT_EQ(std::fread(&dim, 8, 1, f), 1u);
      n *= dim;
    }
    std::vector<float> v(n);
    EXPECT_EQ(std::fread(v.data(), 4, n, f), size_t(n));
    out[name] = std::move(v);
  }
  std::fclose(f);
  return out;
}

class GPT2GoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = ReadGolden(kDir + "gpt2_tiny_expected.bin");
    auto m = core::LoadLlmcCheckpoint(kDir + "gpt2_tiny.bin");
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m);
    auto toks = core::TokenFile::Open(kDir + "gpt2_tiny_tokens.bin");
    ASSERT_TRUE(toks.ok()) << toks.status();
    ASSERT_EQ(toks->size(), B * T + 1);
    for (int i = 0; i < B * T; ++i) {
      inputs_.push_back(toks->tokens()[i]);
      targets_.push_back(toks->tokens()[i + 1]);
    }
    ASSERT_TRUE(model_->Prepare(B, T).ok());
  }
  core::Batch batch() { return {inputs_.data(), targets_.data(), B, T}; }

  static constexpr int B = 2, T = 16;
  std::map<std::string, std::vector<float>> golden_;
  std::unique_ptr<core::GPT2> model_;
  std::vector<int32_t> inputs_, targets_;
};

TEST_F(GPT2GoldenTest, LogitsLossAndEveryGradientMatch) {
  core::Engine engine(model_.get());
  absl::Status st = engine.Forward(batch());
  ASSERT_TRUE(st.ok()) << st;
  const double want = golden_["loss"][0];
  EXPECT_NEAR(engine.Loss(), want, 1e-5 * want);

  const int V = model_->config().vocab_size, Vp = model_->config().padded_vocab_size;
  std::vector<float> logits;
  for (int n = 0; n < B * T; ++n) {
    const float* row = model_->logits().f32() + n * Vp;
    logits.insert(logits.end(), row, row + V);
  }
  EXPECT_TRUE(AllClose(logits, golden_["logits"], 1e-4));

  engine.ZeroGrad();
  ASSERT_TRUE(engine.Backward(batch()).ok());
  for (const core::LlmcTensor& t : core::LlmcTensors(*model_, /*grads=*/true)) {
    std::vector<float> got;
    for (const float* p : t.parts) got.insert(got.end(), p, p + t.part_numel);
    const std::vector<float>& ref = golden_["grad." + t.name];
    ASSERT_EQ(got.size(), ref.size()) << t.name;
    EXPECT_TRUE(AllClose(got, ref, 1e-4)) << "gradient of " << t.name;
  }
}

class GPT2GoldenAdamWTest : public GPT2GoldenTest,
                            public ::testing::WithParamInterface<optim::AdamWVariant> {};

// 10 steps on the same batch, as llm.c's test does; PyTorch's AdamW and llm.c's update.
TEST_P(GPT2GoldenAdamWTest, TenStepsMatch) {
  core::Engine engine(model_.get());
  auto opt = optim::AdamW::Create(model_.get(),
                                  {.lr = 1e-3f,
                                   .beta1 = 0.9f,
                                   .beta2 = 0.999f,
                                   .eps = 1e-8f,
                                   .weight_decay = 0.1f,
                                   .variant = GetParam()},
                                  // PyTorch's single parameter group and llm.c decay every tensor.
                                  optim::DecayPolicy{.decay_1d = true, .no_decay = {}});
  ASSERT_TRUE(opt.ok());
  const std::vector<float>& want =
      golden_[GetParam() == optim::AdamWVariant::kLlmc ? "llmc_adamw_losses" : "adamw_losses"];
  ASSERT_EQ(want.size(), 10u);
  for (int step = 0; step < 10; ++step) {
    ASSERT_TRUE(engine.Forward(batch()).ok());
    EXPECT_NEAR(engine.Loss(), want[step], 1e-5 * want[step]) << "step " << step;
    engine.ZeroGrad();
    ASSERT_TRUE(engine.Backward(batch()).ok());
    (*opt)->Step();
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GPT2GoldenAdamWTest,
                         ::testing::Values(optim::AdamWVariant::kPyTorch,
                                           optim::AdamWVariant::kLlmc));

}  // namespace
}  // namespace memtrain
