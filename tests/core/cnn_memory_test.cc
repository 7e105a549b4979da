// core::Cnn::EstimateMemory against the allocator: for several layer lists (pooled and not, odd
// sizes, one layer, the default), batch sizes, modes and optimizers, the estimate per tag equals
// both what is held after two training steps and the peak during them (a step allocates nothing
// the estimate does not count), and the optimizer's own state description
// (state_names() x state_dtype()) gives the bytes per parameter the estimate was told.
#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/allocator.h"
#include "core/engine.h"
#include "core/model/cnn.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"

namespace memtrain::core {
namespace {

absl::StatusOr<std::unique_ptr<optim::Optimizer>> MakeOpt(const std::string& name, Model* m) {
  absl::StatusOr<std::unique_ptr<optim::Optimizer>> opt;
  if (name == "adamw") opt = optim::AdamW::Create(m, {.lr = 1e-3f});
  if (name == "lion") opt = optim::Lion::Create(m, {.lr = 1e-4f});
  if (name == "lion-bf16") opt = optim::Lion::Create(m, {.lr = 1e-4f, .bf16_momentum = true});
  if (name == "sgd-momentum") opt = optim::Sgd::Create(m, {.lr = 0.05f, .momentum = 0.9f});
  if (name == "sgd") opt = optim::Sgd::Create(m, {.lr = 0.05f});
  return opt;
}

// The optimizer state per parameter as the optimizer describes it.
int64_t StateBytesPerParam(const optim::Optimizer& opt) {
  return static_cast<int64_t>(opt.state_names().size() * DTypeSize(opt.state_dtype()));
}

TEST(CnnMemoryTest, TheEstimateIsWhatTrainingStepsAllocatePerTag) {
  struct Case {
    std::vector<int> layers;
    int B;
  };
  const std::vector<Case> cases = {{{8, kPool, 16, kPool}, 1},
                                   {{8, kPool, 16, kPool}, 5},
                                   {{8, kPool, 16, kPool}, 32},
                                   {{4, 4, kPool, 8}, 3},                // a pool after the 2nd
                                   {{3, kPool, 5, kPool, 7, kPool}, 2},  // 28 -> 14 -> 7 -> 3
                                   {{16}, 4},                            // one layer, no pool
                                   {CnnConfig().layers, 2}};
  // Pixels and labels for the largest batch.
  std::vector<float> images(32 * 28 * 28);
  std::vector<int32_t> labels(32);
  for (size_t i = 0; i < images.size(); ++i) images[i] = static_cast<float>((i * 37) % 101) / 50;
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<int32_t>(i % 10);
  for (const Case& c : cases) {
    for (const char* opt_name : {"adamw", "lion", "lion-bf16", "sgd-momentum", "sgd"}) {
      for (ModelMode mode : {ModelMode::kTrain, ModelMode::kEval, ModelMode::kForwardOnly}) {
        const bool train = mode == ModelMode::kTrain;
        if (!train && std::string(opt_name) != "adamw") continue;  // state is mode-independent
        CnnConfig config;
        config.layers = c.layers;
        SCOPED_TRACE(absl::StrCat("layers [", absl::StrJoin(c.layers, ", "), "], B = ", c.B, ", ",
                                  opt_name, ", ", ModelModeName(mode)));
        const MemoryStats before = GetMemoryStats(Device::Cpu());
        ResetPeakMemory(Device::Cpu());
        MemoryStats after;
        int64_t per_param = -1, state_bytes = -1;
        {
          std::unique_ptr<Cnn> model = Cnn::Create(config).value();
          model->InitWeights(3);
          ASSERT_TRUE(model->Prepare({.B = c.B, .T = 1, .mode = mode}).ok());
          std::unique_ptr<optim::Optimizer> opt = MakeOpt(opt_name, model.get()).value();
          per_param = StateBytesPerParam(*opt);
          state_bytes = opt->state_bytes();
          Engine engine(model.get());
          const Batch batch{.targets = labels.data(), .B = c.B, .T = 1, .images = images.data()};
          for (int step = 0; step < 2; ++step) {
            if (train) {
              engine.ZeroGrad();
              ASSERT_TRUE(engine.Forward(batch).ok());
              ASSERT_TRUE(engine.Backward(batch).ok());
              opt->Step();
            }
            ASSERT_TRUE(engine.Forward(batch, Pass::kEvalForward).ok());
          }
          after = GetMemoryStats(Device::Cpu());
        }
        absl::StatusOr<MemoryEstimate> e =
            Cnn::EstimateMemory(config, {.B = c.B, .T = 1, .mode = mode}, train ? per_param : 0);
        ASSERT_TRUE(e.ok()) << e.status();
        for (int t = 0; t < kNumMemoryTags; ++t) {
          const int64_t want = t == static_cast<int>(MemoryTag::kOptimizer) && !train
                                   ? state_bytes  // the optimizer exists in every mode here
                                   : e->bytes[t];
          EXPECT_EQ(after.current_by_tag[t] - before.current_by_tag[t], want)
              << MemoryTagName(static_cast<MemoryTag>(t));
          EXPECT_EQ(after.peak_by_tag[t] - before.current_by_tag[t], want)
              << "peak " << MemoryTagName(static_cast<MemoryTag>(t));
        }
        if (train) {
          EXPECT_EQ((*e)[MemoryTag::kOptimizer], state_bytes);
        }
        EXPECT_EQ(after.peak - before.current, train ? e->total() : e->total() + state_bytes);
        // BlockNumels: the blocks' sizes, the parameters' bytes.
        const std::vector<int64_t> numels = Cnn::BlockNumels(config).value();
        int64_t params = 0;
        for (int64_t n : numels) params += n;
        EXPECT_EQ((*e)[MemoryTag::kParams], 4 * params);
        EXPECT_EQ((*e)[MemoryTag::kGrads], train ? 4 * params : 0);
      }
    }
  }
}

TEST(CnnMemoryTest, AbsurdSizesSaturateAndBadOptionsAreRefused) {
  CnnConfig huge;
  huge.layers.assign(1000, 4096);
  absl::StatusOr<MemoryEstimate> e =
      Cnn::EstimateMemory(huge, {.B = 1 << 30, .T = 1, .mode = ModelMode::kTrain}, 8);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ((*e)[MemoryTag::kActivations], std::numeric_limits<int64_t>::max());
  EXPECT_EQ(e->total(), std::numeric_limits<int64_t>::max());
  EXPECT_GT((*e)[MemoryTag::kParams], int64_t{1} << 36);  // 1000 x 4096 x 4096 x 9 x 4 bytes
  EXPECT_EQ(Cnn::EstimateMemory({}, {.B = 0, .T = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Cnn::EstimateMemory({}, {.B = 2, .T = 1, .mode = ModelMode::kTrainRecompute}).status().code(),
      absl::StatusCode::kInvalidArgument);
  CnnConfig bad;
  bad.layers = {kPool, 8};
  absl::Status s = Cnn::EstimateMemory(bad, {.B = 2, .T = 1}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("CnnConfig::layers"), std::string::npos) << s;
}

}  // namespace
}  // namespace memtrain::core
