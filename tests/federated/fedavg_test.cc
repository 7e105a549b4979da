// FedAvg rounds over the ranks of the test run (1, 2 or 4 under mpirun): the model after 3 rounds
// is bit-identical to the same rounds on one rank (each rank also runs them alone, on a
// communicator of its own); the average is the sample-weighted mean of the clients' weights;
// pruning masks hold under every local optimizer; client sampling is a pure function of
// (seed, round); a round with one client and no averaging equals plain training.
#include "federated/fedavg.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "core/model/cnn.h"
#include "core/philox.h"
#include "federated/pruning.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "tests/parallel/mpi_test_env.h"

namespace memtrain::federated {
namespace {

using testing::g_world;

const core::CnnConfig kConfig{.in_channels = 1,
                              .height = 8,
                              .width = 8,
                              .num_classes = 3,
                              .layers = {4, core::kPool, 6, core::kPool}};
constexpr int kB = 4;

// 3 classes of noisy 8x8 patterns, 240 images, 12 clients of 20 (image i goes to client i % 12).
struct Data {
  std::vector<float> images;
  std::vector<int32_t> labels;
  std::vector<std::vector<int64_t>> clients;
  Data() {
    const int n = 240;
    for (int i = 0; i < n; ++i) {
      const int c = i * 3 / n;
      labels.push_back(c);
      for (int p = 0; p < 64; ++p) {
        const float pattern = ((p / 8 + c) % 3 == 0) ? 1.0f : -0.5f;
        images.push_back(pattern + 0.3f * core::PhiloxNormal(9, i, p));
      }
    }
    clients.resize(12);
    for (int i = 0; i < n; ++i) clients[i % 12].push_back(i);
  }
  ImageSet set() const {
    return {images.data(), labels.data(), static_cast<int64_t>(labels.size()), 1, 8, 8};
  }
};

enum class Opt { kSgd, kAdamW, kLion };

std::unique_ptr<optim::Optimizer> MakeOpt(Opt o, core::Model* m) {
  switch (o) {
    case Opt::kSgd:
      return optim::Sgd::Create(m, {.lr = 0.05f, .momentum = 0.9f}).value();
    case Opt::kAdamW:
      return optim::AdamW::Create(m, {.lr = 3e-3f, .weight_decay = 0.01f}).value();
    case Opt::kLion:
      return optim::Lion::Create(m, {.lr = 1e-3f, .weight_decay = 0.1f}).value();
  }
  return nullptr;
}

struct Trained {
  std::vector<std::vector<float>> params;
  std::vector<double> losses;        // the clients' local training losses per round
  double before = 0.0, after = 0.0;  // the global model's loss on all the data
};

Trained RunRounds(parallel::Communicator* comm, Opt o, int rounds, bool mask = false) {
  static const Data data;
  auto model = core::Cnn::Create(kConfig).value();
  model->InitWeights(3);
  EXPECT_TRUE(model->Prepare({.B = kB, .T = 1, .mode = core::ModelMode::kTrain}).ok());
  if (mask) {  // prune every third weight of conv1 and of the head
    for (int s : {1, model->num_stages() - 1}) {
      core::ParamBlock& b = model->block(s);
      auto m = core::Tensor::Zeros({b.numel()}, core::DType::kU8, core::MemoryTag::kOther).value();
      for (int64_t i = 0; i < b.numel(); ++i) static_cast<uint8_t*>(m.raw())[i] = i % 3 != 0;
      EXPECT_TRUE(b.SetMask(m).ok());
    }
  }
  auto opt = MakeOpt(o, model.get());
  FedAvg fed(model.get(), opt.get(), comm, data.set(), data.clients,
             {.clients_per_round = 5, .local_epochs = 2, .batch_size = kB, .seed = 11});
  Trained t;
  t.before = fed.Evaluate(data.set()).value().loss;
  for (int r = 0; r < rounds; ++r) {
    auto st = fed.Round(r);
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return t;
    t.losses.push_back(st->train_loss);
  }
  t.after = fed.Evaluate(data.set()).value().loss;
  for (int s = 0; s < model->num_stages(); ++s) {
    const core::ParamBlock& b = model->block(s);
    t.params.emplace_back(b.params().f32(), b.params().f32() + b.numel());
    if (mask && b.has_mask()) {
      const uint8_t* m = static_cast<const uint8_t*>(b.mask().raw());
      for (int64_t i = 0; i < b.numel(); ++i) {
        if (m[i] == 0) EXPECT_EQ(b.params().f32()[i], 0.0f) << b.name() << " element " << i;
      }
    }
  }
  return t;
}

TEST(FedAvgTest, AnyNumberOfRanksGivesTheOneRankModelBitForBit) {
  auto alone = g_world->Split(g_world->rank(), 0).value();  // a communicator of one rank
  for (Opt o : {Opt::kSgd, Opt::kAdamW}) {
    const Trained all = RunRounds(g_world, o, 3);
    const Trained one = RunRounds(alone.get(), o, 3);
    ASSERT_EQ(all.params.size(), one.params.size());
    for (size_t s = 0; s < all.params.size(); ++s) {
      EXPECT_EQ(all.params[s], one.params[s])
          << "block " << s << " on " << g_world->size() << " ranks";
    }
    EXPECT_EQ(all.losses, one.losses);
    EXPECT_EQ(all.after, one.after);
    EXPECT_LT(one.after, 0.9 * one.before) << "the rounds did not train the global model";
  }
}

TEST(FedAvgTest, MasksHoldUnderEveryLocalOptimizer) {
  for (Opt o : {Opt::kSgd, Opt::kAdamW, Opt::kLion}) RunRounds(g_world, o, 2, /*mask=*/true);
}

TEST(FedAvgTest, TheAverageIsTheSampleWeightedMeanOfTheClients) {
  // With lr 0 every client returns the global weights: the average must give them back exactly
  // (weights sum to one) ...
  static const Data data;
  auto model = core::Cnn::Create(kConfig).value();
  model->InitWeights(5);
  ASSERT_TRUE(model->Prepare({.B = kB, .T = 1, .mode = core::ModelMode::kTrain}).ok());
  auto opt = optim::Sgd::Create(model.get(), {.lr = 0.05f}).value();
  ASSERT_TRUE(opt->set_lr(0.0f).ok());
  // ... except BatchNorm's running statistics, which training updates: check those against the
  // mean over the sampled clients, each weighted by its sample count (here all 20).
  std::vector<std::vector<int64_t>> clients = data.clients;
  clients[0].resize(12);  // uneven weights
  FedAvg fed(model.get(), opt.get(), g_world, data.set(), clients,
             {.clients_per_round = 12, .local_epochs = 1, .batch_size = kB, .seed = 1});
  const std::vector<float> w0(model->block(0).params().f32(),
                              model->block(0).params().f32() + model->block(0).numel());
  auto st = fed.Round(0);
  ASSERT_TRUE(st.ok()) << st.status();
  const core::ParamBlock& b = model->block(0);
  const int64_t wn = b.view("w").numel;
  for (int64_t i = 0; i < wn; ++i) EXPECT_EQ(b.params().f32()[i], w0[i]);
  EXPECT_EQ(st->samples, 11 * 20 + 12);
  // Running means moved off their initial 0 (every client saw data).
  const float* mean = b.params().f32() + b.view("bn_mean").offset;
  double moved = 0;
  for (int64_t c = 0; c < b.view("bn_mean").numel; ++c) moved += std::abs(mean[c]);
  EXPECT_GT(moved, 0.0);
}

TEST(FedAvgTest, ClientSamplingIsAPureFunctionOfSeedAndRound) {
  const std::vector<int> a = SampleClients(7, 3, 100, 10), b = SampleClients(7, 3, 100, 10);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, SampleClients(7, 4, 100, 10));
  EXPECT_NE(a, SampleClients(8, 3, 100, 10));
  std::vector<int> s = a;
  std::sort(s.begin(), s.end());
  EXPECT_EQ(std::unique(s.begin(), s.end()), s.end()) << "a client sampled twice";
  for (int c : a) EXPECT_TRUE(c >= 0 && c < 100);
  // Over many rounds every client comes up about equally often.
  std::vector<int> count(100, 0);
  for (int r = 0; r < 2000; ++r) {
    for (int c : SampleClients(7, r, 100, 10)) ++count[c];
  }
  for (int c : count) EXPECT_NEAR(c, 200, 60);
}

// ---- pruning ------------------------------------------------------------------------------------

TEST(TopKHeapTest, KeepsExactlyTheKLargestMagnitudes) {
  for (int k : {1, 5, 37}) {
    TopKHeap heap(k);
    std::vector<std::pair<int64_t, float>> all;
    for (int64_t i = 0; i < 500; ++i) {
      const float v = core::PhiloxNormal(4, k, i);
      heap.Push(i, v);
      all.emplace_back(i, v);
    }
    std::sort(all.begin(), all.end(),
              [](const auto& a, const auto& b) { return std::abs(a.second) > std::abs(b.second); });
    all.resize(k);
    EXPECT_EQ(heap.Sorted(), all) << "k = " << k;
  }
  // A pushed index already held accumulates, and may then be evicted.
  TopKHeap h(2);
  h.Push(1, 1.0f);
  h.Push(2, 2.0f);
  h.Push(1, 2.5f);  // 1 -> 3.5
  h.Push(3, 3.0f);  // evicts 2
  EXPECT_EQ(h.Sorted(), (std::vector<std::pair<int64_t, float>>{{1, 3.5f}, {3, 3.0f}}));
  h.Push(1, -3.4f);  // 1 -> 0.1: now the smallest
  h.Push(4, 0.5f);   // evicts 1
  EXPECT_EQ(h.Sorted(), (std::vector<std::pair<int64_t, float>>{{3, 3.0f}, {4, 0.5f}}));
}

struct Pruned {
  std::vector<std::vector<float>> params;
  std::vector<std::vector<uint8_t>> masks;
  std::vector<double> densities;  // overall, after each round
  int chosen = -1;
  std::vector<double> candidate_losses;
};

Pruned RunPruned(parallel::Communicator* comm, PruneMethod method, double density, int rounds) {
  static const Data data;
  auto model = core::Cnn::Create(kConfig).value();
  model->InitWeights(3);
  EXPECT_TRUE(model->Prepare({.B = kB, .T = 1, .mode = core::ModelMode::kTrain}).ok());
  auto opt = MakeOpt(Opt::kSgd, model.get());
  FedAvg fed(model.get(), opt.get(), comm, data.set(), data.clients,
             {.clients_per_round = 5, .local_epochs = 1, .batch_size = kB, .seed = 11});
  auto pruner = Pruner::Create(model.get(), {.method = method,
                                             .density = density,
                                             .candidates = 4,
                                             .bn_batches = 2,
                                             .adjust_rounds = 3,
                                             .initial_rate = 0.2,
                                             .seed = 2})
                    .value();
  Pruned out;
  EXPECT_TRUE(pruner->Start(fed).ok());
  out.densities.push_back(pruner->density());
  for (int r = 0; r < rounds; ++r) {
    EXPECT_TRUE(pruner->BeforeRound(fed, r).ok());
    auto st = fed.Round(r);
    EXPECT_TRUE(st.ok()) << st.status();
    EXPECT_TRUE(pruner->AfterRound(fed, r).ok());
    out.densities.push_back(pruner->density());
  }
  for (int s = 0; s < model->num_stages(); ++s) {
    const core::ParamBlock& b = model->block(s);
    out.params.emplace_back(b.params().f32(), b.params().f32() + b.numel());
    std::vector<uint8_t> m(b.numel(), 1);
    if (b.has_mask()) {
      const uint8_t* p = static_cast<const uint8_t*>(b.mask().raw());
      m.assign(p, p + b.numel());
      for (int64_t i = 0; i < b.numel(); ++i) {
        if (!m[i]) EXPECT_EQ(b.params().f32()[i], 0.0f) << b.name() << " " << i;
      }
    }
    out.masks.push_back(m);
  }
  out.chosen = pruner->chosen_candidate();
  out.candidate_losses = pruner->candidate_losses();
  return out;
}

TEST(PruningTest, OneShotKeepsTheLargestWeightsAtTheDensityWithTheFirstLayerDense) {
  const Pruned p = RunPruned(g_world, PruneMethod::kOneShot, 0.3, 0);
  // Prunable: conv0.w (36), conv1.w (216), head.w (72): 30% of 324 = 97.2 kept, conv0 dense.
  auto kept = [&](int stage, int64_t n) {
    return std::count(p.masks[stage].begin(), p.masks[stage].begin() + n, 1);
  };
  EXPECT_EQ(kept(0, 36), 36);
  EXPECT_NEAR(p.densities[0], 0.3, 2.0 / 324);
  EXPECT_LT(kept(1, 216), 216);
  // What was kept in conv1.w is larger in magnitude than what was pruned (before the masks: the
  // init; re-create it).
  auto model = core::Cnn::Create(kConfig).value();
  model->InitWeights(3);
  const float* w = model->block(1).params().f32();
  float min_kept = 1e30f, max_pruned = 0;
  for (int64_t i = 0; i < 216; ++i) {
    (p.masks[1][i] ? min_kept : max_pruned) =
        p.masks[1][i] ? std::min(min_kept, std::abs(w[i])) : std::max(max_pruned, std::abs(w[i]));
  }
  EXPECT_GE(min_kept, max_pruned);
}

TEST(PruningTest, FedTinyChoosesTheLowestLossCandidateAndKeepsTheDensity) {
  const Pruned p = RunPruned(g_world, PruneMethod::kFedTiny, 0.3, 4);
  ASSERT_EQ(p.candidate_losses.size(), 4u);
  EXPECT_EQ(p.chosen, std::min_element(p.candidate_losses.begin(), p.candidate_losses.end()) -
                          p.candidate_losses.begin());
  for (double l : p.candidate_losses) EXPECT_TRUE(std::isfinite(l) && l > 0);
  // Progressive pruning prunes K and grows K: the density stays where the selection put it.
  for (double d : p.densities) EXPECT_DOUBLE_EQ(d, p.densities[0]);
  EXPECT_NEAR(p.densities[0], 0.3, 0.02);
}

TEST(PruningTest, FedTinyRevisesMasksAndIsBitIdenticalOnAnyNumberOfRanks) {
  auto alone = g_world->Split(g_world->rank(), 0).value();
  const Pruned all = RunPruned(g_world, PruneMethod::kFedTiny, 0.3, 3);
  const Pruned one = RunPruned(alone.get(), PruneMethod::kFedTiny, 0.3, 3);
  EXPECT_EQ(all.masks, one.masks);
  EXPECT_EQ(all.params, one.params);
  // The adjustments changed the masks of the layers they revised (head, then conv1).
  const Pruned start = RunPruned(alone.get(), PruneMethod::kFedTiny, 0.3, 0);
  EXPECT_NE(one.masks[2], start.masks[2]) << "the head's mask was not revised";
  EXPECT_NE(one.masks[1], start.masks[1]) << "conv1's mask was not revised";
  EXPECT_EQ(one.masks[0], start.masks[0]) << "the first layer must stay dense";
}

}  // namespace
}  // namespace memtrain::federated
