// ZO-SGD (MeZO) against independent references: the lanes' losses against a second model whose
// weights were moved by +-eps*z by hand (so the perturbation reaches every block, the tied
// embedding once), the update against the MeZO rule computed on the host, lr = 0 bit-identical,
// and learning on one memorised batch.
#include "optim/zo.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"

namespace memtrain::optim {
namespace {

constexpr int B = 2, T = 8;
const core::GPT2Config kConfig{
    .max_seq_len = 16, .vocab_size = 64, .n_layer = 2, .n_head = 2, .n_embd = 16};

std::unique_ptr<core::GPT2> MakeModel(core::ModelMode mode, int lanes) {
  auto m = core::GPT2::Create(kConfig).value();
  m->InitWeights(7);
  EXPECT_TRUE(m->Prepare({.B = B, .T = T, .mode = mode, .lanes = lanes}).ok());
  return m;
}

struct Data {
  std::vector<int32_t> in, tg;
  Data() : in(B * T), tg(B * T) {
    for (int i = 0; i < B * T; ++i) {
      in[i] = (i * 7 + 3) % kConfig.vocab_size;
      tg[i] = (i * 5 + 1) % kConfig.vocab_size;
    }
  }
  core::Batch batch() const { return {in.data(), tg.data(), B, T}; }
};

std::vector<std::vector<float>> Weights(core::Model& m) {
  std::vector<std::vector<float>> w;
  for (int s = 0; s < m.num_stages(); ++s) {
    const float* p = m.block(s).params().f32();
    w.emplace_back(p, p + m.block(s).numel());
  }
  return w;
}

TEST(ZoTest, LrZeroLeavesTheWeightsBitIdentical) {
  auto m = MakeModel(core::ModelMode::kForwardOnly, 4);
  core::Engine engine(m.get());
  auto zo = ZoSgd::Create(m.get(), {.lr = 0.0f, .eps = 1e-2f, .samples = 2}).value();
  const auto before = Weights(*m);
  Data d;
  for (int step = 0; step < 3; ++step) {
    auto r = zo->Step(engine, d.batch(), ZoStepSeed(1, step));
    ASSERT_TRUE(r.ok()) << r.status();
    for (int i = 0; i < 2; ++i) EXPECT_NE(r->loss_plus[i], r->loss_minus[i]) << "not perturbed";
  }
  const auto after = Weights(*m);
  for (size_t s = 0; s < before.size(); ++s) {
    EXPECT_EQ(0, std::memcmp(before[s].data(), after[s].data(), before[s].size() * 4))
        << "block " << s;
  }
}

TEST(ZoTest, LaneLossesAreThoseOfWeightsMovedByHand) {
  const float eps = 1e-2f;
  const uint64_t seed = ZoStepSeed(42, 5);
  auto m = MakeModel(core::ModelMode::kForwardOnly, 4);
  core::Engine engine(m.get());
  auto zo = ZoSgd::Create(m.get(), {.lr = 0.0f, .eps = eps, .samples = 2}).value();
  Data d;
  auto r = zo->Step(engine, d.batch(), seed);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto theta = Weights(*m);
  for (int i = 0; i < 2; ++i) {
    for (const float s : {1.0f, -1.0f}) {
      // An eval model whose every block holds theta + s*eps*z_i, written here on the host: the
      // tied embedding is moved once, as block 0, and the head reads that.
      auto ref = MakeModel(core::ModelMode::kEval, 1);
      for (int b = 0; b < ref->num_stages(); ++b) {
        const int64_t n = ref->block(b).numel();
        float* p = ref->block(b).params().f32();
        for (int64_t j = 0; j < n; ++j) {  // one rounding, as the perturbation promises
          p[j] = std::fmaf(
              s * eps,
              core::PhiloxNormal(seed, ZoStream(ref->block(b).id(), i), static_cast<uint64_t>(j)),
              theta[b][j]);
        }
      }
      core::Engine ref_engine(ref.get());
      ASSERT_TRUE(ref_engine.Forward(d.batch(), core::Pass::kEvalForward).ok());
      const double want = ref->Loss(0);
      const double got = s > 0 ? r->loss_plus[i] : r->loss_minus[i];
      EXPECT_DOUBLE_EQ(got, want) << "sample " << i << " sign " << s;
    }
    EXPECT_DOUBLE_EQ(r->projected_grad[i], (r->loss_plus[i] - r->loss_minus[i]) / (2.0 * eps));
  }
}

// The update theta -= lr * (mean_i c_i z_i + wd * theta) (c = g or sign(g)), on the host.
void CheckUpdate(bool sign) {
  const ZoConfig cfg{.lr = 1e-2f, .eps = 1e-2f, .weight_decay = 0.1f, .samples = 2, .sign = sign};
  const uint64_t seed = ZoStepSeed(3, 1);
  auto m = MakeModel(core::ModelMode::kForwardOnly, 4);
  core::Engine engine(m.get());
  auto zo = ZoSgd::Create(m.get(), cfg).value();
  const auto before = Weights(*m);
  Data d;
  auto r = zo->Step(engine, d.batch(), seed);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto after = Weights(*m);
  double max_err = 0, max_step = 0;
  for (int b = 0; b < m->num_stages(); ++b) {
    const core::ParamBlock& blk = m->block(b);
    std::vector<double> want(before[b].begin(), before[b].end());
    for (const core::ParamView& v : blk.views()) {
      if (!v.decay) continue;
      for (int64_t j = v.offset; j < v.offset + v.numel; ++j) {
        want[j] -= cfg.lr * cfg.weight_decay * before[b][j];
      }
    }
    for (int i = 0; i < cfg.samples; ++i) {
      const double g = r->projected_grad[i];
      const double c = sign ? (g > 0) - (g < 0) : g;
      for (int64_t j = 0; j < blk.numel(); ++j) {
        want[j] -= cfg.lr * c / cfg.samples *
                   core::PhiloxNormal(seed, ZoStream(blk.id(), i), static_cast<uint64_t>(j));
      }
    }
    for (int64_t j = 0; j < blk.numel(); ++j) {
      max_err = std::max(max_err, std::abs(after[b][j] - want[j]));
      max_step = std::max(max_step, std::abs(want[j] - before[b][j]));
    }
  }
  EXPECT_GT(max_step, 1e-4) << "the update must move the weights for the check to mean much";
  EXPECT_LT(max_err, 1e-5 * max_step + 1e-7) << "largest step " << max_step;
}

TEST(ZoTest, UpdateIsTheMeZORule) { CheckUpdate(/*sign=*/false); }
TEST(ZoTest, SignUpdateIsTheZoSignSgdRule) { CheckUpdate(/*sign=*/true); }

TEST(ZoTest, LearnsOneBatch) {
  auto m = MakeModel(core::ModelMode::kForwardOnly, 8);
  core::Engine engine(m.get());
  auto zo = ZoSgd::Create(m.get(), {.lr = 2e-3f, .eps = 1e-3f, .samples = 4}).value();
  Data d;
  double first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    auto r = zo->Step(engine, d.batch(), ZoStepSeed(11, step));
    ASSERT_TRUE(r.ok()) << r.status();
    if (step == 0) first = r->loss();
    last = r->loss();
  }
  EXPECT_LT(last, first - 0.2) << "ZO-SGD must lower the loss of a memorised batch";
}

// The noise cache (the + lane's draw reused by the - lane) changes nothing: the same losses and
// weights, bit for bit, as drawing twice; and it is what the first test's hand-moved weights
// check too (the default).
TEST(ZoTest, NoiseCacheGivesTheSameBits) {
  std::vector<std::vector<float>> weights[2];
  std::vector<double> losses[2];
  for (int cache = 0; cache < 2; ++cache) {
    auto m = MakeModel(core::ModelMode::kForwardOnly, 4);
    core::Engine engine(m.get());
    auto zo =
        ZoSgd::Create(m.get(), {.lr = 1e-2f, .eps = 1e-2f, .samples = 2, .cache_noise = cache == 1})
            .value();
    Data d;
    for (int step = 0; step < 3; ++step) {
      auto r = zo->Step(engine, d.batch(), ZoStepSeed(5, step));
      ASSERT_TRUE(r.ok()) << r.status();
      for (int i = 0; i < 2; ++i) {
        losses[cache].push_back(r->loss_plus[i]);
        losses[cache].push_back(r->loss_minus[i]);
      }
    }
    weights[cache] = Weights(*m);
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(weights[0], weights[1]);
  EXPECT_NE(losses[0][0], losses[0][1]) << "the lanes must see different weights";
}

TEST(ZoTest, BadConfigAndUnpreparedModelAreRefused) {
  auto m = MakeModel(core::ModelMode::kTrain, 1);
  EXPECT_EQ(ZoSgd::Create(m.get(), {.eps = 0.0f}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ZoSgd::Create(m.get(), {.samples = 0}).status().message().find("ZoConfig::samples"),
            absl::string_view::npos);
  auto zo = ZoSgd::Create(m.get(), {}).value();
  core::Engine engine(m.get());
  Data d;
  EXPECT_EQ(zo->Step(engine, d.batch(), 1).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace memtrain::optim
