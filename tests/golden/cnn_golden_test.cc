// core::Cnn against an independent float64 PyTorch implementation (make_cnn_golden.py): the
// training-mode logits and loss, every parameter gradient, the BatchNorm running statistics after
// the training forward, and evaluation-mode logits. Also the model's gradients against central
// finite differences of its own loss, and its bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/engine.h"
#include "core/model/cnn.h"
#include "core/threads.h"
#include "optim/sgd.h"
#include "tests/core/test_util.h"

namespace memtrain::core {
namespace {

const CnnConfig kTiny{
    .in_channels = 1, .height = 8, .width = 8, .num_classes = 3, .layers = {4, kPool, 6, kPool}};
constexpr int kB = 5;

std::vector<std::vector<double>> ReadGolden() {
  const std::string path = std::string(MEMTRAIN_SOURCE_DIR) + "/tests/golden/data/cnn_tiny.bin";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << path;
  std::vector<std::vector<double>> out;
  if (f == nullptr) return out;
  int32_t n = 0;
  EXPECT_EQ(std::fread(&n, 4, 1, f), 1u);
  for (int i = 0; i < n; ++i) {
    int32_t len = 0;
    EXPECT_EQ(std::fread(&len, 4, 1, f), 1u);
    std::vector<double> a(len);
    EXPECT_EQ(std::fread(a.data(), 8, len, f), static_cast<size_t>(len));
    out.push_back(std::move(a));
  }
  std::fclose(f);
  return out;
}

std::vector<float> ToFloat(const std::vector<double>& v) { return {v.begin(), v.end()}; }

TEST(CnnGoldenTest, MatchesPyTorchInFloat64) {
  const std::vector<std::vector<double>> g = ReadGolden();
  auto model = Cnn::Create(kTiny).value();
  const int S = model->num_stages();
  ASSERT_EQ(static_cast<int>(g.size()), S + 4 + S + S + 1);
  for (int s = 0; s < S; ++s) {
    ParamBlock& b = model->block(s);
    ASSERT_EQ(static_cast<int64_t>(g[s].size()), b.numel()) << b.name();
    for (int64_t i = 0; i < b.numel(); ++i) b.params().f32()[i] = static_cast<float>(g[s][i]);
  }
  const std::vector<float> images = ToFloat(g[S]);
  std::vector<int32_t> labels;
  for (double l : g[S + 1]) labels.push_back(static_cast<int32_t>(l));
  ASSERT_TRUE(model->Prepare({.B = kB, .T = 1, .mode = ModelMode::kTrain}).ok());
  Engine engine(model.get());
  const Batch batch{.targets = labels.data(), .B = kB, .T = 1, .images = images.data()};
  ASSERT_TRUE(engine.Forward(batch).ok());
  // Logits are overwritten by the backward: check the loss first, the logits through an eval
  // forward of the training-mode statistics below.
  EXPECT_NEAR(engine.Loss(), g[S + 3][0], 1e-5 * std::abs(g[S + 3][0]));
  ASSERT_TRUE(engine.Backward(batch).ok());
  for (int s = 0; s < S; ++s) {
    const ParamBlock& b = model->block(s);
    std::vector<float> grad(b.grads().f32(), b.grads().f32() + b.numel());
    EXPECT_TRUE(testing::AllClose(grad, g[S + 4 + s], 1e-4)) << "gradient of " << b.name();
    // The running statistics after one training forward (params otherwise unchanged).
    std::vector<float> p(b.params().f32(), b.params().f32() + b.numel());
    EXPECT_TRUE(testing::AllClose(p, g[S + 4 + S + s], 1e-5)) << "params of " << b.name();
  }
  // Evaluation mode (running statistics).
  ASSERT_TRUE(engine.Forward(batch, Pass::kEvalForward).ok());
  ASSERT_TRUE(engine.Forward(batch, Pass::kEvalForward).ok());  // no state moves in eval
  // The head's logits of the eval forward: recompute the loss-free comparison through Correct
  // and the loss of the eval logits.
  const std::vector<double>& eval_logits = g.back();
  double want = 0;
  int valid = 0;
  for (int i = 0; i < kB; ++i) {
    if (labels[i] < 0) continue;
    double m = -1e300, z = 0;
    for (int k = 0; k < 3; ++k) m = std::max(m, eval_logits[i * 3 + k]);
    for (int k = 0; k < 3; ++k) z += std::exp(eval_logits[i * 3 + k] - m);
    want += m + std::log(z) - eval_logits[i * 3 + labels[i]];
    ++valid;
  }
  want /= valid;
  EXPECT_NEAR(engine.Loss(), want, 1e-5 * std::abs(want)) << "eval-mode loss";
}

// d loss / d theta by central differences of the model's own float loss, for a sample of the
// parameters of every block (training mode: batch statistics, so BN's backward is exercised).
TEST(CnnModelTest, GradientsMatchFiniteDifferences) {
  auto model = Cnn::Create(kTiny).value();
  model->InitWeights(4);
  ASSERT_TRUE(model->Prepare({.B = kB, .T = 1, .mode = ModelMode::kTrain}).ok());
  std::vector<float> images = testing::RandomFloats(kB * 64, 5);
  std::vector<int32_t> labels = {0, 1, 2, 1, 0};
  const Batch batch{.targets = labels.data(), .B = kB, .T = 1, .images = images.data()};
  Engine engine(model.get());
  ASSERT_TRUE(engine.Forward(batch).ok());
  ASSERT_TRUE(engine.Backward(batch).ok());
  // Running statistics change at every training forward but do not enter its output: the
  // differences below are unaffected.
  auto loss_at = [&](ParamBlock& b, int64_t i, float x) {
    const float saved = b.params().f32()[i];
    b.params().f32()[i] = x;
    EXPECT_TRUE(engine.Forward(batch).ok());
    b.params().f32()[i] = saved;
    return static_cast<double>(engine.Loss());
  };
  for (int s = 0; s < model->num_stages(); ++s) {
    ParamBlock& b = model->block(s);
    const std::vector<float> grad(b.grads().f32(), b.grads().f32() + b.numel());
    for (const ParamView& v : b.views()) {
      if (!v.trainable) continue;
      for (int64_t k = 0; k < std::min<int64_t>(v.numel, 6); ++k) {
        const int64_t i = v.offset + (k * 7919) % v.numel;
        const float x = b.params().f32()[i], h = 1e-2f;
        const double fd = (loss_at(b, i, x + h) - loss_at(b, i, x - h)) / (2.0 * h);
        EXPECT_NEAR(grad[i], fd, 2e-3 + 2e-2 * std::abs(fd))
            << b.name() << "." << v.name << "[" << i - v.offset << "]";
      }
    }
  }
}

// The thread count is the rank's share of the cores, so 1 rank on 2 cores and 2 ranks on 2 cores
// compute with 2 and 1 threads: federated rounds are bit-identical across rank counts only if a
// training step is bit-identical across thread counts. Sized like the examples (28x28, B = 32).
TEST(CnnModelTest, TrainingStepsAreBitIdenticalOnOneAndTwoThreads) {
  const int saved = GetThreads();
  const CnnConfig config{.layers = {16, kPool, 32, kPool}};
  constexpr int B = 32;
  const std::vector<float> images = testing::RandomFloats(B * 28 * 28, 9);
  std::vector<int32_t> labels(B);
  for (int i = 0; i < B; ++i) labels[i] = (i * 7) % 10;
  std::vector<std::vector<float>> params[2];
  float losses[2][3];
  for (int t = 0; t < 2; ++t) {
    SetThreads(t + 1);
    auto model = Cnn::Create(config).value();
    model->InitWeights(3);
    ASSERT_TRUE(model->Prepare({.B = B, .T = 1, .mode = ModelMode::kTrain}).ok());
    auto opt = optim::Sgd::Create(model.get(), {.lr = 0.05f, .momentum = 0.9f}).value();
    Engine engine(model.get());
    const Batch batch{.targets = labels.data(), .B = B, .T = 1, .images = images.data()};
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(engine.Forward(batch).ok());
      losses[t][step] = engine.Loss();
      ASSERT_TRUE(engine.Backward(batch).ok());
      opt->Step();
    }
    for (int s = 0; s < model->num_stages(); ++s) {
      const ParamBlock& b = model->block(s);
      params[t].emplace_back(b.params().f32(), b.params().f32() + b.numel());
    }
  }
  SetThreads(saved);
  for (int step = 0; step < 3; ++step) EXPECT_EQ(losses[0][step], losses[1][step]) << step;
  ASSERT_EQ(params[0].size(), params[1].size());
  for (size_t s = 0; s < params[0].size(); ++s) EXPECT_EQ(params[0][s], params[1][s]) << s;
}

TEST(CnnModelTest, BadConfigAndBatchesAreRefused) {
  EXPECT_FALSE(Cnn::Create({.layers = {kPool, 8}}).ok());
  EXPECT_FALSE(Cnn::Create({.layers = {}}).ok());
  EXPECT_FALSE(Cnn::Create({.height = 2, .width = 2, .layers = {4, kPool, 4, kPool}}).ok());
  auto model = Cnn::Create(kTiny).value();
  EXPECT_FALSE(model->Prepare({.B = 2, .T = 3, .mode = ModelMode::kTrain}).ok());
  ASSERT_TRUE(model->Prepare({.B = 2, .T = 1, .mode = ModelMode::kTrain}).ok());
  std::vector<float> images(2 * 64, 0.0f);
  std::vector<int32_t> labels = {0, 3};  // 3 is not a class
  EXPECT_FALSE(
      model->ValidateBatch({.targets = labels.data(), .B = 2, .T = 1, .images = images.data()})
          .ok());
  EXPECT_FALSE(model->ValidateBatch({.targets = labels.data(), .B = 2, .T = 1}).ok());
}

}  // namespace
}  // namespace memtrain::core
