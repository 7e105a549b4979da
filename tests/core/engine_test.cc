// The engine's contract: stage order and hooks, gradient accumulation and loss scaling, and the
// GPT-2 initialisation.
#include "core/engine.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model/gpt2.h"

namespace memtrain::core {
namespace {

GPT2Config Tiny() {
  return {.max_seq_len = 16, .vocab_size = 40, .n_layer = 3, .n_head = 2, .n_embd = 16};
}

class RecordingHooks : public StageHooks {
 public:
  absl::Status BeforeForward(const StageEvent& e) override {
    log.push_back(absl::StrCat("F", e.stage));
    return absl::OkStatus();
  }
  absl::Status AfterBackward(const StageEvent& e) override {
    log.push_back(absl::StrCat("B", e.stage));
    grad_norm_seen.push_back(e.block->grads().f32()[0]);
    return absl::OkStatus();
  }
  std::vector<std::string> log;
  std::vector<float> grad_norm_seen;
};

struct Fixture {
  std::unique_ptr<GPT2> model;
  std::vector<int32_t> in, tg;
  Batch batch;
};

Fixture Make(int B, int T) {
  Fixture f;
  f.model = GPT2::Create(Tiny()).value();
  f.model->InitWeights(11);
  EXPECT_TRUE(f.model->Prepare(B, T).ok());
  for (int i = 0; i < B * T; ++i) {
    f.in.push_back((i * 7) % 40);
    f.tg.push_back((i * 5 + 3) % 40);
  }
  f.batch = {f.in.data(), f.tg.data(), B, T};
  return f;
}

TEST(EngineTest, RunsStagesInOrderAndBackwardInReverseWithHooks) {
  Fixture f = Make(2, 8);
  Engine engine(f.model.get());
  RecordingHooks hooks;
  engine.AddHooks(&hooks);
  ASSERT_TRUE(engine.Forward(f.batch).ok());
  engine.ZeroGrad();
  ASSERT_TRUE(engine.Backward(f.batch).ok());
  EXPECT_EQ(hooks.log,
            (std::vector<std::string>{"F0", "F1", "F2", "F3", "F4", "B4", "B3", "B2", "B1", "B0"}));
  EXPECT_EQ(f.model->extra_blocks(4), std::vector<int>{0});  // the head reads the tied wte
}

TEST(EngineTest, GradientsAccumulateAndScale) {
  Fixture f = Make(2, 8);
  Engine engine(f.model.get());
  ASSERT_TRUE(engine.Forward(f.batch).ok());
  engine.ZeroGrad();
  ASSERT_TRUE(engine.Backward(f.batch).ok());
  std::vector<std::vector<float>> g1;
  for (int s = 0; s < f.model->num_stages(); ++s) {
    const Tensor& g = f.model->block(s).grads();
    g1.emplace_back(g.f32(), g.f32() + g.numel());
  }
  // Backward again without zeroing, with loss_scale 0.5: grads become 1.5x.
  ASSERT_TRUE(engine.Forward(f.batch).ok());
  ASSERT_TRUE(engine.Backward(f.batch, 0.5f).ok());
  for (int s = 0; s < f.model->num_stages(); ++s) {
    const Tensor& g = f.model->block(s).grads();
    for (int64_t i = 0; i < g.numel(); ++i) {
      ASSERT_NEAR(g.f32()[i], 1.5f * g1[s][i], 1e-6f + 1e-5f * std::abs(g1[s][i]))
          << "stage " << s << " index " << i;
    }
  }
}

TEST(EngineTest, BadBatchIsRejectedBeforeAnyStageRuns) {
  Fixture f = Make(2, 8);
  Engine engine(f.model.get());
  RecordingHooks hooks;
  engine.AddHooks(&hooks);
  f.in[5] = 40;  // == vocab_size
  EXPECT_EQ(engine.Forward(f.batch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(hooks.log.empty());
  Batch wrong = f.batch;
  wrong.T = 4;
  EXPECT_EQ(engine.Forward(wrong).code(), absl::StatusCode::kInvalidArgument);
}

// A wrapper in the place Ulysses takes: it sees every block's attention call, forward and back.
class CountingAttention : public LocalAttention {
 public:
  absl::Status Prepare(const AttentionShape& shape) override {
    prepared = shape;
    return absl::OkStatus();
  }
  absl::Status Forward(const AttentionCall& c, float* out, float* lse, const float* qkv) override {
    layers_forward.push_back(c.layer);
    return LocalAttention::Forward(c, out, lse, qkv);
  }
  absl::Status Backward(const AttentionCall& c, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* lse) override {
    layers_backward.push_back(c.layer);
    if (fail_backward) return absl::UnavailableError("exchange failed");
    return LocalAttention::Backward(c, dqkv, dout, qkv, out, lse);
  }
  AttentionShape prepared;
  std::vector<int> layers_forward, layers_backward;
  bool fail_backward = false;
};

TEST(EngineTest, AttentionIsReachedThroughTheInterface) {
  Fixture f = Make(2, 8);
  CountingAttention counting;
  f.model->set_attention(&counting);
  ASSERT_TRUE(f.model->Prepare({.B = 2, .T = 8, .mode = ModelMode::kTrainRecompute}).ok());
  EXPECT_EQ(counting.prepared.T, 8);
  EXPECT_EQ(counting.prepared.NH, 2);
  EXPECT_EQ(counting.prepared.n_layer, 3);
  EXPECT_EQ(counting.prepared.mode, ModelMode::kTrainRecompute);
  Engine engine(f.model.get());
  ASSERT_TRUE(engine.Forward(f.batch).ok());
  ASSERT_TRUE(engine.Backward(f.batch).ok());
  EXPECT_EQ(counting.layers_forward, (std::vector<int>{0, 1, 2, 2, 1, 0}));  // + recompute
  EXPECT_EQ(counting.layers_backward, (std::vector<int>{2, 1, 0}));
  // An attention error stops the backward with its status.
  counting.fail_backward = true;
  ASSERT_TRUE(engine.Forward(f.batch).ok());
  EXPECT_EQ(engine.Backward(f.batch).code(), absl::StatusCode::kUnavailable);
}

TEST(GPT2InitTest, DeterministicWithGPT2Scales) {
  GPT2Config c{.max_seq_len = 64, .vocab_size = 256, .n_layer = 8, .n_head = 4, .n_embd = 128};
  auto a = GPT2::Create(c).value(), b = GPT2::Create(c).value();
  a->InitWeights(7);
  b->InitWeights(7);
  for (int s = 0; s < a->num_stages(); ++s) {
    ASSERT_EQ(0, std::memcmp(a->block(s).params().raw(), b->block(s).params().raw(),
                             a->block(s).params().nbytes()));
  }
  auto stddev = [](const Tensor& t) {
    double s2 = 0;
    for (int64_t i = 0; i < t.numel(); ++i) s2 += double(t.f32()[i]) * t.f32()[i];
    return std::sqrt(s2 / t.numel());
  };
  EXPECT_NEAR(stddev(a->block(0).param("wte")), 0.02, 0.001);
  EXPECT_NEAR(stddev(a->block(3).param("fcw")), 0.02, 0.001);
  EXPECT_NEAR(stddev(a->block(3).param("fcprojw")), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_EQ(a->block(3).param("ln1w").f32()[5], 1.0f);
  EXPECT_EQ(a->block(3).param("qkvb").f32()[5], 0.0f);
  // Distinct tensors get distinct streams.
  EXPECT_NE(a->block(1).param("qkvw").f32()[0], a->block(2).param("qkvw").f32()[0]);
  a->InitWeights(8);
  EXPECT_NE(a->block(1).param("qkvw").f32()[0], b->block(1).param("qkvw").f32()[0]);
}

}  // namespace
}  // namespace memtrain::core
