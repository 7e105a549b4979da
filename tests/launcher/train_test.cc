// The training loop with caller hooks: a failing hook stops the run with its status and nothing
// is checkpointed; hooks see training, backward and evaluation passes as what they are.
#include "launcher/train.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

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

}  // namespace
}  // namespace memtrain::launcher
