// The training loop with caller hooks: a failing hook stops the run with its status and nothing
// is checkpointed; hooks see training, backward and evaluation passes as what they are; a NaN
// gradient never reaches the weights (train.on_nonfinite STOP or SKIP).
#include "launcher/train.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/token_file.h"
#include "launcher/spec.h"

namespace memtrain::launcher {
namespace {

class TrainLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/train_loop_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    std::vector<uint16_t> toks(4000);
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = (i * 7 + i / 11) % 64;
    ASSERT_TRUE(core::WriteTokenFile(dir_ + "/train.bin", toks).ok());
    ASSERT_TRUE(core::WriteTokenFile(dir_ + "/val.bin", toks).ok());
    job_ = ParseJobText(
               "model { gpt { n_layer: 2 n_head: 2 n_embd: 16 vocab_size: 64 max_seq_len: 32 } "
               "} train { steps: 4 batch_size: 2 seq_len: 16 eval_every: 2 eval_batches: 2 } "
               "optimizer { adamw { lr: 1e-3 } }",
               "test.pbtxt")
               .value();
    job_.mutable_data()->set_train_tokens(dir_ + "/train.bin");
    job_.mutable_data()->set_val_tokens(dir_ + "/val.bin");
    job_.mutable_checkpoint()->set_dir(dir_ + "/ckpt");
    job_.mutable_checkpoint()->set_every(1);
    FillDefaults(&job_);
    ASSERT_TRUE(ValidateJob(job_, 1).ok());
    world_ = parallel::CreateSelfCommunicator();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  Job job_;
  std::unique_ptr<parallel::Communicator> world_;
};

class FailingHook : public core::StageHooks {
 public:
  core::HookRole role() const override { return core::HookRole::kMemory; }
  absl::Status BeforeForward(const core::StageEvent& e) override {
    if (e.stage == 2) return absl::DataLossError("block h.1: checksum mismatch at offset 4096");
    return absl::OkStatus();
  }
};

TEST_F(TrainLoopTest, AFailingHookStopsTheRunWithItsMessageAndWritesNoCheckpoint) {
  FailingHook failing;
  TrainOptions options{.quiet = true, .hooks = {&failing}};
  absl::Status s = RunTraining(job_, options, world_.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "block h.1: checksum mismatch at offset 4096");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ckpt/latest"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ckpt/step_00000001"));
}

class PassCounter : public core::StageHooks {
 public:
  core::HookRole role() const override { return core::HookRole::kObserve; }
  absl::Status BeginPass(const core::PassEvent& e) override {
    ++passes[core::PassName(e.pass)];
    return absl::OkStatus();
  }
  std::map<std::string, int> passes;
};

TEST_F(TrainLoopTest, HooksSeeEvaluationAsEvaluation) {
  PassCounter counter;
  TrainOptions options{.quiet = true, .hooks = {&counter}};
  ASSERT_TRUE(RunTraining(job_, options, world_.get()).ok());
  EXPECT_EQ(counter.passes["train forward"], 4);
  EXPECT_EQ(counter.passes["backward"], 4);
  EXPECT_EQ(counter.passes["eval forward"], 2 * 2);  // at steps 2 and 4, 2 batches each
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/ckpt/step_00000004"));
}

// Puts a NaN into one gradient during the backward of training step `step` (1-based).
class PoisonGradient : public core::StageHooks {
 public:
  explicit PoisonGradient(int step) : step_(step) {}
  core::HookRole role() const override { return core::HookRole::kGradients; }
  absl::Status BeginPass(const core::PassEvent& e) override {
    if (e.pass == core::Pass::kBackward) ++backward_;
    return absl::OkStatus();
  }
  absl::Status AfterBackward(const core::StageEvent& e) override {
    if (backward_ == step_ && e.stage == 1) e.block->grads().f32()[3] = std::nanf("");
    return absl::OkStatus();
  }

 private:
  int step_, backward_ = 0;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST_F(TrainLoopTest, ANonFiniteGradientStopsBeforeTheUpdateAndTheLastCheckpointStays) {
  PoisonGradient poison(3);
  job_.mutable_output()->set_metrics(dir_ + "/m.jsonl");
  TrainOptions options{.quiet = true, .hooks = {&poison}};
  absl::Status s = RunTraining(job_, options, world_.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("step 3: the gradient norm is nan"), std::string::npos) << s;
  EXPECT_NE(s.message().find("train.on_nonfinite"), std::string::npos) << s;
  EXPECT_NE(s.message().find("step_00000002, is intact"), std::string::npos) << s;
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/ckpt/step_00000002"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/ckpt/step_00000003"));
  const std::string metrics = ReadFile(dir_ + "/m.jsonl");
  EXPECT_NE(metrics.find(R"("step": 3, )"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"("grad_norm": null, "skipped": true)"), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("nan"), std::string::npos) << metrics;
}

TEST_F(TrainLoopTest, SkipDropsTheNonFiniteStepAndGoesOn) {
  PoisonGradient poison(3);
  job_.mutable_output()->set_metrics(dir_ + "/m.jsonl");
  job_.mutable_train()->set_on_nonfinite(Train::SKIP);
  TrainOptions options{.quiet = true, .hooks = {&poison}};
  ASSERT_TRUE(RunTraining(job_, options, world_.get()).ok());
  const std::string metrics = ReadFile(dir_ + "/m.jsonl");
  EXPECT_NE(metrics.find(R"("skipped": true)"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"({"event": "end", "step": 4, "skipped_steps": 1})"), std::string::npos)
      << metrics;
  // Three optimizer steps were applied in four training steps.
  const std::string state = ReadFile(dir_ + "/ckpt/step_00000004/state.json");
  EXPECT_NE(state.find(R"("optimizer_step": 3)"), std::string::npos) << state;
  // The step-3 checkpoint holds the weights of step 2: nothing of the skipped step was applied.
  auto w2 = checkpoint::LoadModel(dir_ + "/ckpt/step_00000002").value();
  auto w3 = checkpoint::LoadModel(dir_ + "/ckpt/step_00000003").value();
  for (int b = 0; b < w2->num_stages(); ++b) {
    const core::Tensor& a = w2->block(b).params();
    ASSERT_EQ(0, std::memcmp(a.raw(), w3->block(b).params().raw(), a.nbytes())) << b;
  }
}

TEST_F(TrainLoopTest, SkipStopsAfterTooManySkipsInARow) {
  job_.mutable_train()->set_on_nonfinite(Train::SKIP);
  job_.mutable_train()->set_max_consecutive_skips(2);
  PoisonGradient poison2(2), poison3(3);
  TrainOptions options{.quiet = true, .hooks = {&poison2, &poison3}};
  absl::Status s = RunTraining(job_, options, world_.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_NE(s.message().find("train.max_consecutive_skips"), std::string::npos) << s;
}

}  // namespace
}  // namespace memtrain::launcher
