// Data parallelism against a single-process run: W ranks with micro-batch B each must give the
// same losses (1e-5 relative) and weights as one process with batch W*B over the same tokens,
// which llm.c's batch order makes the concatenation of the ranks' batches. With AdamW, and with
// Lion plus global-norm clipping (the norm of the all-reduced gradient).
#include "parallel/data_parallel.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <vector>

#include "core/data_loader.h"
#include "core/llmc.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "tests/core/test_util.h"
#include "tests/parallel/mpi_test_env.h"

namespace memtrain::parallel {
namespace {

using memtrain::testing::g_world;

constexpr int kSteps = 10, B = 2, T = 16;

core::GPT2Config Config() {
  return {.max_seq_len = 32, .vocab_size = 64, .n_layer = 2, .n_head = 2, .n_embd = 32};
}

struct RunResult {
  std::vector<float> losses;
  std::vector<float> params;
  // Where params holds a key bias: its gradient is zero in exact arithmetic (softmax is
  // invariant to a shift shared by all scores of a query), so in float it is rounding noise of
  // random sign, which Lion's sign() turns into full +-lr steps that differ between any two
  // summation orders.
  std::vector<bool> key_bias;
};

// params without the key-bias entries.
std::vector<float> WithoutKeyBias(const RunResult& r) {
  std::vector<float> out;
  for (size_t i = 0; i < r.params.size(); ++i) {
    if (!r.key_bias[i]) out.push_back(r.params[i]);
  }
  return out;
}

enum class Opt { kAdamW, kLionClipped };

// Trains kSteps steps over `comm` with micro-batch `b` and `accum` micro-steps per step.
RunResult Train(Communicator* comm, const core::TokenFile& tokens, int b, int accum,
                Opt which = Opt::kAdamW) {
  auto model = core::GPT2::Create(Config()).value();
  model->InitWeights(5);
  EXPECT_TRUE(model->Prepare(b, T).ok());
  auto loader = core::DataLoader::Create(&tokens, b, T, comm->rank(), comm->size()).value();
  std::unique_ptr<optim::Optimizer> opt;
  if (which == Opt::kAdamW) {
    opt = optim::AdamW::Create(model.get(), {.lr = 1e-3f, .weight_decay = 0.1f}).value();
  } else {
    opt = optim::Lion::Create(model.get(), {.lr = 1e-3f, .weight_decay = 0.3f}).value();
  }
  // Clipping under data parallelism: the norm of the all-reduced gradient, the same on all ranks.
  const float clip = which == Opt::kLionClipped ? 0.5f : 0.0f;
  core::Engine engine(model.get());
  DataParallelHooks ddp(comm);
  engine.AddHooks(&ddp);
  std::vector<int32_t> in(b * T), tg(b * T);
  core::Batch batch{in.data(), tg.data(), b, T};
  RunResult r;
  for (int step = 0; step < kSteps; ++step) {
    engine.ZeroGrad();
    double loss = 0;
    for (int micro = 0; micro < accum; ++micro) {
      loader.Next(in.data(), tg.data());
      EXPECT_TRUE(engine.Forward(batch).ok());
      loss += engine.Loss();
      ddp.set_sync(micro == accum - 1);
      EXPECT_TRUE(engine.Backward(batch, 1.0f / (comm->size() * accum)).ok());
    }
    EXPECT_TRUE(ddp.Wait().ok());
    loss /= accum;
    EXPECT_TRUE(comm->AllReduce(&loss, 1, core::DType::kF64, ReduceOp::kSum).Wait().ok());
    r.losses.push_back(static_cast<float>(loss / comm->size()));
    const double norm = optim::GlobalGradNorm(*model);
    if (clip > 0) {
      EXPECT_GT(norm, clip) << "the test should exercise clipping";
    }
    opt->Step(optim::ClipScale(norm, clip));
  }
  const int64_t C = model->config().n_embd;
  for (int s = 0; s < model->num_stages(); ++s) {
    const core::ParamBlock& b = model->block(s);
    const core::Tensor& p = b.params();
    const size_t base = r.params.size();
    r.params.insert(r.params.end(), p.f32(), p.f32() + p.numel());
    r.key_bias.resize(r.params.size(), false);
    if (s >= 1 && s <= model->config().n_layer) {
      const int64_t kb = b.view("qkvb").offset + C;
      for (int64_t i = 0; i < C; ++i) r.key_bias[base + kb + i] = true;
    }
  }
  return r;
}

class DataParallelTest : public ::testing::TestWithParam<Opt> {};

TEST_P(DataParallelTest, MatchesOneProcessWithTheCombinedBatch) {
  const int W = g_world->size();
  std::vector<uint16_t> toks(kSteps * 2 * W * B * T + 1);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = (i * 7 + i / 13) % 64;
  const std::string path = ::testing::TempDir() + "/dp_" + std::to_string(getpid()) + "_tokens.bin";
  ASSERT_TRUE(core::WriteTokenFile(path, toks).ok());
  auto tokens = core::TokenFile::Open(path).value();

  RunResult dp = Train(g_world, tokens, B, /*accum=*/1, GetParam());
  // Every data-parallel rank holds the same weights.
  std::vector<float> rank0 = dp.params;
  ASSERT_TRUE(g_world->Broadcast(rank0.data(), rank0.size(), core::DType::kF32, 0).Wait().ok());
  EXPECT_EQ(rank0, dp.params);

  if (g_world->rank() == 0) {
    auto self = CreateSelfCommunicator();
    RunResult one = Train(self.get(), tokens, W * B, 1, GetParam());
    RunResult acc = Train(self.get(), tokens, B, /*accum=*/W, GetParam());  // == wider batch
    for (int s = 0; s < kSteps; ++s) {
      EXPECT_NEAR(dp.losses[s], one.losses[s], 1e-5 * one.losses[s]) << "step " << s;
      EXPECT_NEAR(acc.losses[s], one.losses[s], 1e-5 * one.losses[s]) << "step " << s;
    }
    if (GetParam() == Opt::kAdamW) {
      EXPECT_TRUE(memtrain::testing::AllClose(dp.params, one.params, 1e-4));
      EXPECT_TRUE(memtrain::testing::AllClose(acc.params, one.params, 1e-4));
    } else {
      EXPECT_TRUE(memtrain::testing::AllClose(WithoutKeyBias(dp), WithoutKeyBias(one), 1e-4));
      EXPECT_TRUE(memtrain::testing::AllClose(WithoutKeyBias(acc), WithoutKeyBias(one), 1e-4));
    }
  }
  EXPECT_TRUE(g_world->Barrier().Wait().ok());
}

INSTANTIATE_TEST_SUITE_P(Optimizers, DataParallelTest,
                         ::testing::Values(Opt::kAdamW, Opt::kLionClipped));

// A user hook that changes one block's gradients, added AFTER the data-parallel hooks. Before
// hook roles it ran while the block's all-reduce was in flight and the ranks' weights diverged.
// Now: declared kGradients it runs before the reduction (so even a factor that differs between
// ranks, as a per-rank statistic would, gives one reduced gradient); left at the default role it
// runs once the reduction is done, on the same reduced gradient on every rank.
class ScaleOneBlock : public core::StageHooks {
 public:
  ScaleOneBlock(core::HookRole role, float factor) : role_(role), factor_(factor) {}
  core::HookRole role() const override { return role_; }
  absl::Status AfterBackward(const core::StageEvent& e) override {
    if (e.stage != 1) return absl::OkStatus();
    float* g = e.block->grads().f32();
    // Slow on purpose: a long read-modify-write over the gradient while a collective could be
    // reading and writing it.
    for (int rep = 0; rep < 20; ++rep) {
      for (int64_t i = 0; i < e.block->numel(); ++i) g[i] *= rep == 0 ? factor_ : 1.0f;
    }
    return absl::OkStatus();
  }

 private:
  core::HookRole role_;
  float factor_;
};

TEST(DataParallelHooksTest, HookOrderCannotBreakDataParallelism) {
  const int W = g_world->size();
  if (W < 2) GTEST_SKIP() << "needs 2 or more ranks";
  for (core::HookRole role : {core::HookRole::kGradients, core::HookRole::kReducedGradients}) {
    auto model = core::GPT2::Create(Config()).value();
    model->InitWeights(5);
    ASSERT_TRUE(model->Prepare(B, T).ok());
    auto opt = optim::AdamW::Create(model.get(), {.weight_decay = 0.1f}).value();
    core::Engine engine(model.get());
    DataParallelHooks ddp(g_world);
    const float factor = role == core::HookRole::kGradients ? 1.0f + 0.5f * g_world->rank() : 0.5f;
    ScaleOneBlock scale(role, factor);
    engine.AddHooks(&ddp);
    engine.AddHooks(&scale);  // the order that used to race
    std::vector<int32_t> in(B * T), tg(B * T);
    for (int step = 0; step < 5; ++step) {
      for (int i = 0; i < B * T; ++i) {
        in[i] = (i * 3 + step + 7 * g_world->rank()) % 64;
        tg[i] = (i * 5 + step) % 64;
      }
      core::Batch batch{in.data(), tg.data(), B, T};
      EXPECT_TRUE(engine.Forward(batch).ok());
      engine.ZeroGrad();
      EXPECT_TRUE(engine.Backward(batch, 1.0f / W).ok());
      EXPECT_TRUE(ddp.Wait().ok());
      opt->Step(1e-3f);
    }
    // Every rank holds exactly rank 0's weights. Every rank takes part in every broadcast
    // whatever it finds, so a failure cannot hang the other ranks.
    for (int s = 0; s < model->num_stages(); ++s) {
      const core::Tensor& p = model->block(s).params();
      std::vector<float> mine(p.f32(), p.f32() + p.numel()), root = mine;
      EXPECT_TRUE(g_world->Broadcast(root.data(), root.size(), core::DType::kF32, 0).Wait().ok());
      EXPECT_TRUE(mine == root) << "rank " << g_world->rank() << ": stage " << s
                                << " differs from rank 0 with role " << static_cast<int>(role);
    }
  }
}

}  // namespace
}  // namespace memtrain::parallel
