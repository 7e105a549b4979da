// Ulysses sequence parallelism against one rank: every rank of the world is one sequence-parallel
// rank holding its share of the tokens; the token-weighted loss and the sum over ranks of every
// parameter's gradient must match the single-rank forward and backward of the whole batch,
// which each rank computes for itself. B > 1, T = 130 (uneven over 3 and 4 ranks), 6 heads
// (uneven over 4 ranks), ignored targets (one rank's whole shard of a sequence among them), with
// and without the per-layer kept tensors, with recompute, and evaluation.
#include "parallel/ulysses.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/allocator.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "tests/parallel/mpi_test_env.h"

namespace memtrain::parallel {
namespace {

using memtrain::testing::g_world;

core::GPT2Config Config(int n_head) {
  return {.max_seq_len = 160, .vocab_size = 64, .n_layer = 2, .n_head = n_head, .n_embd = 48};
}

struct Data {
  std::vector<int32_t> inputs, targets;
  core::Batch batch;
};

Data MakeData(int B, int T, bool ignored) {
  Data d;
  d.inputs.resize(B * T);
  d.targets.resize(B * T);
  for (int i = 0; i < B * T; ++i) {
    d.inputs[i] = static_cast<int32_t>(core::PhiloxUniform(9, 0, i) * 64);
    d.targets[i] = static_cast<int32_t>(core::PhiloxUniform(9, 1, i) * 64);
  }
  if (ignored) {
    for (int t = 0; t < 50; ++t) d.targets[t] = -1;  // sequence 0: the first 50 tokens
    for (int t = 1; t < T; t += 7) d.targets[T + t] = -1;
  }
  d.batch = core::Batch{d.inputs.data(), d.targets.data(), B, T};
  return d;
}

int Valid(const std::vector<int32_t>& targets) {
  return static_cast<int>(
      std::count_if(targets.begin(), targets.end(), [](int v) { return v >= 0; }));
}

struct Result {
  double loss = 0;
  std::vector<std::vector<float>> grads;  // per block
};

Result Reference(const core::GPT2Config& cfg, const Data& d, core::ModelMode mode) {
  auto m = core::GPT2::Create(cfg).value();
  m->InitWeights(3);
  EXPECT_TRUE(m->Prepare({.B = d.batch.B, .T = d.batch.T, .mode = mode}).ok());
  core::Engine engine(m.get());
  Result r;
  if (!core::IsTrainingMode(mode)) {
    EXPECT_TRUE(engine.Forward(d.batch, core::Pass::kEvalForward).ok());
    r.loss = engine.Loss();
    return r;
  }
  EXPECT_TRUE(engine.Forward(d.batch).ok());
  r.loss = engine.Loss();
  engine.ZeroGrad();
  EXPECT_TRUE(engine.Backward(d.batch).ok());
  for (int b = 0; b < m->num_stages(); ++b) {
    const core::Tensor& g = m->block(b).grads();
    r.grads.emplace_back(g.f32(), g.f32() + g.numel());
  }
  return r;
}

// Every rank of `comm` one sequence rank: the global loss and the summed gradients.
Result Sharded(const core::GPT2Config& cfg, const Data& d, core::ModelMode mode, bool keep,
               Communicator* comm, AllToAllCounters* counters = nullptr) {
  UlyssesAttention ul(comm, d.batch.T, {.keep_exchanged = keep});
  auto m = core::GPT2::Create(cfg).value();
  m->InitWeights(3);
  m->set_attention(&ul);
  absl::Status prepared =
      m->Prepare({.B = d.batch.B, .T = static_cast<int>(ul.local_T()), .mode = mode});
  EXPECT_TRUE(prepared.ok()) << prepared;
  std::vector<int32_t> in, tg;
  const core::Batch local = ShardBatch(d.batch, ul, &in, &tg);
  EXPECT_EQ(local.pos_offset, ul.offset());
  core::Engine engine(m.get());
  const double Vr = Valid(tg), Vg = Valid(d.targets);
  Result r;
  absl::Status ran = core::IsTrainingMode(mode) ? engine.Forward(local)
                                                : engine.Forward(local, core::Pass::kEvalForward);
  EXPECT_TRUE(ran.ok()) << ran;
  // The token-weighted mean over the group.
  double weighted = engine.Loss() * Vr;
  EXPECT_TRUE(comm->AllReduce(&weighted, 1, core::DType::kF64, ReduceOp::kSum).Wait().ok());
  r.loss = weighted / Vg;
  if (core::IsTrainingMode(mode)) {
    engine.ZeroGrad();
    // Each rank's mean over its Vr tokens, scaled to the global mean's share.
    ran = engine.Backward(local, static_cast<float>(Vr / Vg));
    EXPECT_TRUE(ran.ok()) << ran;
    for (int b = 0; b < m->num_stages(); ++b) {
      const core::Tensor& g = m->block(b).grads();
      EXPECT_TRUE(
          comm->AllReduce(g.f32(), g.numel(), core::DType::kF32, ReduceOp::kSum).Wait().ok());
      r.grads.emplace_back(g.f32(), g.f32() + g.numel());
    }
  }
  if (counters != nullptr) *counters = ul.counters();
  return r;
}

void ExpectSame(const Result& got, const Result& want, const char* what) {
  EXPECT_NEAR(got.loss, want.loss, 1e-5 * std::abs(want.loss)) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size()) << what;
  for (size_t b = 0; b < want.grads.size(); ++b) {
    double worst = 0, scale = 0;
    for (size_t i = 0; i < want.grads[b].size(); ++i) {
      worst = std::max(worst, std::abs(double(got.grads[b][i]) - want.grads[b][i]));
      scale = std::max(scale, std::abs(double(want.grads[b][i])));
    }
    EXPECT_GT(scale, 0) << what << " block " << b;
    EXPECT_LE(worst, 1e-5 * scale) << what << ": block " << b << " gradient differs by " << worst
                                   << " (largest " << scale << ")";
  }
}

TEST(UlyssesTest, LossAndEveryGradientMatchOneRank) {
  const int P = g_world->size();
  for (int heads : {6, 12}) {
    if (heads < P) continue;
    const core::GPT2Config cfg = Config(heads);
    for (bool ignored : {false, true}) {
      const Data d = MakeData(2, 130, ignored);
      const Result want = Reference(cfg, d, core::ModelMode::kTrain);
      SCOPED_TRACE(::testing::Message()
                   << P << " ranks, " << heads << " heads, ignored " << ignored);
      ExpectSame(Sharded(cfg, d, core::ModelMode::kTrain, true, g_world), want, "kept");
      ExpectSame(Sharded(cfg, d, core::ModelMode::kTrain, false, g_world), want, "re-exchanged");
      ExpectSame(Sharded(cfg, d, core::ModelMode::kTrainRecompute, true, g_world), want,
                 "recompute");
    }
  }
}

TEST(UlyssesTest, EvaluationLossMatchesOneRank) {
  const core::GPT2Config cfg = Config(6);
  if (g_world->size() > 6) GTEST_SKIP() << "more ranks than heads";
  const Data d = MakeData(3, 101, true);
  const Result want = Reference(cfg, d, core::ModelMode::kEval);
  const Result got = Sharded(cfg, d, core::ModelMode::kEval, true, g_world);
  EXPECT_NEAR(got.loss, want.loss, 1e-5 * want.loss);
}

// Even splits: each exchange of q, k, v moves B*T*3C/P elements per rank, of which (P-1)/P leave
// it; the output C (+ NH/P softmax statistics) per token; backward with kept tensors d(out) in
// and dq, dk, dv out. Per layer, the same whatever P when T grows with P.
TEST(UlyssesTest, AllToAllBytesFollowTheFormula) {
  const int P = g_world->size();
  const int B = 2, T = 24 * P, C = 48, NH = 12, L = 2;
  if (NH % P != 0) GTEST_SKIP() << "the formula is for even splits";
  const Data d = MakeData(B, T, false);
  AllToAllCounters kept, again;
  Sharded(Config(NH), d, core::ModelMode::kTrain, true, g_world, &kept);
  Sharded(Config(NH), d, core::ModelMode::kTrain, false, g_world, &again);
  const double leave = double(P - 1) / P, f = 4;  // bytes per element
  const double per_rank_tokens = double(B) * T / P;
  const double fwd = per_rank_tokens * (3 * C + C + NH) * leave * f;
  const double bwd_kept = per_rank_tokens * (C + 3 * C) * leave * f;
  EXPECT_EQ(kept.sent_bytes, static_cast<int64_t>(L * (fwd + bwd_kept)));
  EXPECT_EQ(kept.received_bytes, kept.sent_bytes);
  EXPECT_EQ(kept.exchanges, 4 * L);
  // Without the kept tensors, backward sends q, k, v, out and lse again with d(out), except for
  // the last layer (its tensors are still at hand from forward).
  const double bwd_again = per_rank_tokens * (5 * C + NH + 3 * C) * leave * f;
  EXPECT_EQ(again.sent_bytes, static_cast<int64_t>(L * fwd + bwd_kept + (L - 1) * bwd_again));
  if (P > 1) EXPECT_GT(kept.sent_bytes, 0);
}

// What Prepare allocates is what Estimate says (the trainer's memory check relies on it), tag by
// tag, for every plan; and with recompute backward needs no more buffers than forward.
TEST(UlyssesTest, TheEstimateIsWhatPrepareAllocates) {
  const int P = g_world->size();
  if (P > 6) GTEST_SKIP() << "more ranks than heads";
  const core::GPT2Config cfg = Config(6);
  for (auto [mode, keep] :
       {std::pair{core::ModelMode::kTrain, true}, std::pair{core::ModelMode::kTrain, false},
        std::pair{core::ModelMode::kTrainRecompute, true},
        std::pair{core::ModelMode::kEval, true}}) {
    SCOPED_TRACE(::testing::Message() << core::ModelModeName(mode) << " keep " << keep);
    UlyssesAttention ul(g_world, 130, {.keep_exchanged = keep});
    auto m = core::GPT2::Create(cfg).value();
    m->set_attention(&ul);
    const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
    const int Tr = static_cast<int>(ul.local_T());
    ASSERT_TRUE(m->Prepare({.B = 2, .T = Tr, .mode = mode}).ok());
    const core::MemoryStats after = core::GetMemoryStats(core::Device::Cpu());
    auto model = core::GPT2::EstimateMemory(cfg, {.B = 2, .T = Tr, .mode = mode}).value();
    const UlyssesBytes u =
        UlyssesAttention::Estimate({.B = 2,
                                    .T = Tr,
                                    .C = 48,
                                    .NH = 6,
                                    .n_layer = 2,
                                    .mode = mode,
                                    .device = core::Device::Cpu()},
                                   130, P, g_world->rank(), {.keep_exchanged = keep});
    auto delta = [&](core::MemoryTag t) {
      return after.current_by_tag[int(t)] - before.current_by_tag[int(t)];
    };
    EXPECT_EQ(delta(core::MemoryTag::kActivations),
              model[core::MemoryTag::kActivations] + u.activations);
    EXPECT_EQ(delta(core::MemoryTag::kScratch), model[core::MemoryTag::kScratch] + u.scratch);
  }
}

TEST(UlyssesTest, BadShapesAreRefusedNamingTheFields) {
  absl::Status s = UlyssesAttention::Check(3, 12, 48, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("train.seq_len"), std::string::npos) << s;
  s = UlyssesAttention::Check(128, 6, 48, 8);
  EXPECT_NE(s.message().find("model.gpt.n_head"), std::string::npos) << s;
  EXPECT_NE(s.message().find("parallel.sequence"), std::string::npos) << s;
  EXPECT_TRUE(UlyssesAttention::Check(130, 6, 48, 4).ok());
  // The model prepared for the global T instead of the rank's share.
  if (g_world->size() > 1) {
    UlyssesAttention ul(g_world, 130);
    auto m = core::GPT2::Create(Config(6)).value();
    m->set_attention(&ul);
    EXPECT_FALSE(m->Prepare({.B = 1, .T = 130}).ok());
  }
}

TEST(UlyssesTest, SplitsCoverEveryTokenOnce) {
  for (int64_t n : {1, 5, 130, 4096}) {
    for (int p : {1, 2, 3, 4, 7}) {
      int64_t next = 0;
      for (int i = 0; i < p; ++i) {
        EXPECT_EQ(SplitOffset(n, p, i), next);
        next += SplitCount(n, p, i);
        EXPECT_LE(SplitCount(n, p, i) - SplitCount(n, p, p - 1), 1);
      }
      EXPECT_EQ(next, n);
    }
  }
}

}  // namespace
}  // namespace memtrain::parallel
