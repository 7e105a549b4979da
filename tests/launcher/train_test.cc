// The training loop with caller hooks: a failing hook stops the run with its status and nothing
// is checkpointed; hooks see training, backward and evaluation passes as what they are; a NaN
// gradient never reaches the weights (train.on_nonfinite STOP or SKIP). The memory estimate is
// exactly what the setup allocates, per tag; too large a job is refused with it; --check's data
// checks give the run's errors; sample streams exactly the text it returns. A federated job's
// estimate is its run's allocator peak, and a federated job too large is refused naming its fields.
#include "launcher/train.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint.h"
#include "core/allocator.h"
#include "core/bpe.h"
#include "core/model/cnn.h"
#include "core/token_file.h"
#include "launcher/federated.h"
#include "launcher/loop.h"
#include "launcher/sample.h"
#include "launcher/spec.h"
#include "optim/zo.h"

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

// ---- memory estimate, --check's data checks, streamed samples ----

// Create + Prepare + the first backward's gradients + the optimizer allocate exactly the
// estimate, tag by tag, through the trainer's own BuildSetup.
TEST_F(TrainLoopTest, TheMemoryEstimateIsExactPerTag) {
  const char* optimizers[] = {"adamw { lr: 1e-3 }", "lion { lr: 1e-4 }",
                              "lion { lr: 1e-4 momentum_dtype: BF16 }", "sgd { lr: 0.1 }",
                              "sgd { lr: 0.1 momentum: 0.9 }"};
  for (bool recompute : {false, true}) {
    for (const char* opt : optimizers) {
      SCOPED_TRACE(absl::StrCat(opt, recompute ? " recompute" : ""));
      Job job = job_;
      job.mutable_train()->set_recompute(recompute);
      job.mutable_train()->set_batch_size(3);
      job.mutable_train()->set_seq_len(8);
      job.clear_optimizer();
      Job opt_job = ParseJobText(absl::StrCat("optimizer { ", opt, " }"), "o").value();
      *job.mutable_optimizer() = opt_job.optimizer();
      FillDefaults(&job);
      ASSERT_TRUE(ValidateJob(job, 1).ok());
      absl::StatusOr<std::optional<core::GPT2Config>> config = JobModelConfig(job, false);
      ASSERT_TRUE(config.ok() && config->has_value()) << config.status();
      absl::StatusOr<MemoryNeed> need = EstimateJobMemory(job, **config);
      ASSERT_TRUE(need.ok()) << need.status();
      EXPECT_GT(need->data_bytes, 0);

      const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
      {
        launcher::Setup s;
        ASSERT_TRUE(
            BuildSetup(job, {}, 0, 1,
                       recompute ? core::ModelMode::kTrainRecompute : core::ModelMode::kTrain, &s)
                .ok());
        for (int b = 0; b < s.model->num_stages(); ++b) {
          ASSERT_TRUE(s.model->block(b).EnsureGrads().ok());  // as the engine's first Backward
        }
        const core::MemoryStats after = core::GetMemoryStats(core::Device::Cpu());
        for (int t = 0; t < core::kNumMemoryTags; ++t) {
          EXPECT_EQ(after.current_by_tag[t] - before.current_by_tag[t], need->by_tag.bytes[t])
              << core::MemoryTagName(static_cast<core::MemoryTag>(t));
        }
        EXPECT_EQ(need->by_tag[core::MemoryTag::kOptimizer], s.opt->state_bytes());
      }
    }
  }
  // A zeroth-order job: the forward-only plan with the rank's lanes and the perturbation's scratch.
  for (int perturbation : {1, 2, 4}) {
    SCOPED_TRACE(absl::StrCat("zo, perturbation ", perturbation));
    Job job = job_;
    job.mutable_train()->set_batch_size(3);
    job.mutable_train()->set_seq_len(8);
    job.mutable_train()->set_grad_accum(1);
    job.clear_optimizer();
    job.mutable_optimizer()->mutable_zo()->set_samples(2);
    job.mutable_parallel()->set_perturbation(perturbation);
    FillDefaults(&job);
    absl::StatusOr<std::optional<core::GPT2Config>> config = JobModelConfig(job, false);
    ASSERT_TRUE(config.ok() && config->has_value()) << config.status();
    absl::StatusOr<MemoryNeed> need = EstimateJobMemory(job, **config);
    ASSERT_TRUE(need.ok()) << need.status();
    const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
    launcher::Setup s;
    ASSERT_TRUE(BuildSetup(job, {}, 0, 1, core::ModelMode::kForwardOnly, &s).ok());
    // As the zo strategy's Start: rank 0 of the perturbation group runs lanes 0, P, ... of 4.
    auto* zo = dynamic_cast<optim::ZoSgd*>(s.opt.get());
    ASSERT_NE(zo, nullptr);
    zo->set_lanes(0, perturbation);
    ASSERT_TRUE(s.model
                    ->Prepare({.B = 3,
                               .T = 8,
                               .mode = core::ModelMode::kForwardOnly,
                               .lanes = (4 + perturbation - 1) / perturbation})
                    .ok());
    const core::MemoryStats after = core::GetMemoryStats(core::Device::Cpu());
    for (int t = 0; t < core::kNumMemoryTags; ++t) {
      EXPECT_EQ(after.current_by_tag[t] - before.current_by_tag[t], need->by_tag.bytes[t])
          << core::MemoryTagName(static_cast<core::MemoryTag>(t));
    }
  }
  // The forward-only plans of core::GPT2::EstimateMemory too (no gradients, no scratch).
  core::GPT2Config c{.max_seq_len = 32, .vocab_size = 64, .n_layer = 3, .n_head = 2, .n_embd = 16};
  for (core::PrepareOptions o :
       {core::PrepareOptions{.B = 2, .T = 8, .mode = core::ModelMode::kEval},
        core::PrepareOptions{.B = 2, .T = 8, .mode = core::ModelMode::kForwardOnly, .lanes = 2}}) {
    absl::StatusOr<core::GPT2::MemoryEstimate> e = core::GPT2::EstimateMemory(c, o);
    ASSERT_TRUE(e.ok()) << e.status();
    const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
    std::unique_ptr<core::GPT2> m = core::GPT2::Create(c).value();
    ASSERT_TRUE(m->Prepare(o).ok());
    const core::MemoryStats after = core::GetMemoryStats(core::Device::Cpu());
    for (int t = 0; t < core::kNumMemoryTags; ++t) {
      EXPECT_EQ(after.current_by_tag[t] - before.current_by_tag[t], e->bytes[t])
          << core::ModelModeName(o.mode) << " "
          << core::MemoryTagName(static_cast<core::MemoryTag>(t));
    }
  }
}

TEST_F(TrainLoopTest, AJobTooLargeForTheMemoryIsRefusedWithTheEstimate) {
  job_.mutable_model()->mutable_gpt()->set_n_layer(100000000);
  ASSERT_TRUE(ValidateJob(job_, 1).ok());
  absl::StatusOr<MemoryNeed> need = EstimateJobMemory(job_, ToGPT2Config(job_.model().gpt()));
  ASSERT_TRUE(need.ok()) << need.status();
  EXPECT_GT(need->total(), int64_t{1} << 40);
  absl::Status s = CheckMemory(job_, *need);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  for (const char* want : {"params", "grads", "optimizer", "activations", "available",
                           "train.batch_size", "train.recompute", "smaller model"}) {
    EXPECT_NE(s.message().find(want), std::string::npos) << want << ": " << s;
  }
  // The GPU's memory is not the host's: not checked here.
  job_.mutable_train()->set_device("cuda");
  EXPECT_TRUE(CheckMemory(job_, *need).ok());
  // Absurd sizes saturate instead of overflowing.
  core::GPT2Config huge{.max_seq_len = 1 << 30,
                        .vocab_size = 1 << 30,
                        .n_layer = 1 << 30,
                        .n_head = 1,
                        .n_embd = 1 << 30};
  absl::StatusOr<core::GPT2::MemoryEstimate> e =
      core::GPT2::EstimateMemory(huge, {.B = 1 << 30, .T = 1 << 30});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->bytes[0], std::numeric_limits<int64_t>::max());
}

TEST_F(TrainLoopTest, AHostMemoryBudgetIsTheAvailableMemory) {
  absl::StatusOr<MemoryNeed> need = EstimateJobMemory(job_, ToGPT2Config(job_.model().gpt()));
  ASSERT_TRUE(need.ok());
  EXPECT_TRUE(CheckMemory(job_, *need).ok());
  const int64_t in_use = core::GetMemoryStats(core::Device::Cpu()).current;
  core::SetMemoryBudget(core::Device::Cpu(), in_use + need->total() / 2);
  absl::Status s = CheckMemory(job_, *need);
  core::SetMemoryBudget(core::Device::Cpu(), 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("the host memory budget"), std::string::npos) << s;
  EXPECT_EQ(HostMemoryAvailable().source.find("budget"), std::string::npos);
}

TEST(FederatedMemoryTest, AFederatedJobTooLargeIsRefusedNamingItsFields) {
  Job job = ParseJobText(
                "model { cnn { layers: [4096, 4096, -1, 4096] } } optimizer { adamw { lr: 1e-3 } } "
                "federated { num_clients: 100 clients_per_round: 10 batch_size: 100000 }",
                "fed.pbtxt")
                .value();
  FillDefaults(&job);
  ASSERT_TRUE(ValidateJob(job, 1).ok()) << ValidateJob(job, 1);
  absl::StatusOr<MemoryNeed> need = EstimateFederatedJobMemory(job, 2);
  ASSERT_TRUE(need.ok()) << need.status();
  EXPECT_GT(need->total(), int64_t{1} << 40);
  absl::Status s = CheckMemory(job, *need);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  for (const char* want :
       {"params", "optimizer", "activations", "FedAvg buffers", "Fashion-MNIST", "available",
        "federated.batch_size", "model.cnn.layers", "federated.clients_per_round", "sgd"}) {
    EXPECT_NE(s.message().find(want), std::string::npos) << want << ": " << s;
  }
  EXPECT_EQ(s.message().find("train.batch_size"), std::string::npos) << s;
  // A bad model.cnn is named as the job spec's field.
  job.mutable_model()->mutable_cnn()->set_layers(0, -1);
  absl::Status bad = EstimateFederatedJobMemory(job, 1).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("model.cnn.layers"), std::string::npos) << bad;
}

// --check runs the data checks of the run and reports the run's own errors.
TEST_F(TrainLoopTest, ValidateDataReportsWhatTheRunWouldRefuse) {
  EXPECT_TRUE(ValidateData(job_, 0, 1).ok());
  Job small_vocab = job_;
  small_vocab.mutable_model()->mutable_gpt()->set_vocab_size(32);
  absl::Status check = ValidateData(small_vocab, 0, 1);
  EXPECT_EQ(check.code(), absl::StatusCode::kInvalidArgument) << check;
  EXPECT_NE(check.message().find("outside the model's vocabulary"), std::string::npos) << check;
  absl::Status run = RunTraining(small_vocab, {.quiet = true, .hooks = {}}, world_.get());
  EXPECT_EQ(run.message(), check.message());

  Job big_batch = job_;
  big_batch.mutable_train()->set_batch_size(300);  // 300 x 16 + 1 > 4000 tokens
  check = ValidateData(big_batch, 0, 1);
  EXPECT_EQ(check.code(), absl::StatusCode::kInvalidArgument) << check;
  EXPECT_NE(check.message().find("fewer than"), std::string::npos) << check;
  run = RunTraining(big_batch, {.quiet = true, .hooks = {}}, world_.get());
  EXPECT_EQ(run.message(), check.message());
  // Enough for one rank, not for each of 2 data ranks.
  Job two = job_;
  two.mutable_train()->set_batch_size(150);  // 2 x 150 x 16 + 1 > 4000 >= 150 x 16 + 1
  EXPECT_TRUE(ValidateData(two, 0, 1).ok());
  EXPECT_NE(ValidateData(two, 1, 2).message().find("fewer than"), std::string::npos);
}

// The streamed pieces are the returned text, byte-level and with a BPE vocabulary.
TEST(SampleTest, StreamedTextIsTheReturnedText) {
  for (int vocab_size : {256, 300}) {
    std::optional<core::Bpe> bpe;
    if (vocab_size != 256) {
      std::string text;
      for (int i = 0; i < 200; ++i) text += "in the beginning was the word ";
      bpe = core::Bpe::Train(text, vocab_size).value();
    }
    std::unique_ptr<core::GPT2> m =
        core::GPT2::Create(
            {.max_seq_len = 32, .vocab_size = vocab_size, .n_layer = 1, .n_head = 2, .n_embd = 16})
            .value();
    m->InitWeights(5);
    std::vector<std::string> pieces;
    SampleOptions o{.prompt = "in the", .tokens = 40, .seed = 3};
    if (bpe) o.vocab = &*bpe;
    o.on_text = [&](std::string_view p) {
      pieces.emplace_back(p);
      return true;
    };
    absl::StatusOr<std::string> text = Sample(*m, o);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(pieces.size(), 41u);  // the prompt, then one piece per token, as drawn
    std::string joined;
    for (const std::string& p : pieces) joined += p;
    EXPECT_EQ(joined, *text);
    o.on_text = nullptr;  // the same text without streaming
    EXPECT_EQ(Sample(*m, o).value(), *text);
    int calls = 0;  // a consumer that stops
    o.on_text = [&](std::string_view) { return ++calls < 5; };
    EXPECT_EQ(Sample(*m, o).status().code(), absl::StatusCode::kAborted);
    EXPECT_EQ(calls, 5);
  }
}

// A federated job: the allocator part of EstimateFederatedJobMemory (model, gradients, optimizer
// state, activations, scratch, pruning masks) is the allocator peak of a whole run, exactly (the
// masks of every block but the first; FedTiny's adjustment replaces each mask while the old one
// exists, which the estimate counts as one block more), and the peak_client_mib metric is it less
// that replacement (measured inside the round, before the adjustment). Skipped without Debian's
// dataset-fashion-mnist.
TEST(FederatedMemoryTest, TheEstimateIsTheRunsAllocatorPeak) {
  const std::string fm = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte";
  if (!std::filesystem::exists(fm + ".gz") && !std::filesystem::exists(fm)) {
    GTEST_SKIP() << "no Fashion-MNIST (apt install dataset-fashion-mnist)";
  }
  const std::string dir =
      ::testing::TempDir() + "/federated_memory_" + std::to_string(getpid()) + "/";
  std::filesystem::create_directories(dir);
  std::unique_ptr<parallel::Communicator> world = parallel::CreateSelfCommunicator();
  struct Case {
    const char* layers;
    const char* optimizer;
    const char* pruning;
    int batch;
  };
  for (const Case& c :
       {Case{"[8, -1, 16, -1]", "adamw { lr: 1e-3 }", "NONE", 16},
        Case{"[4, 6, -1, 8, -1]", "sgd { lr: 0.05 momentum: 0.9 }", "ONE_SHOT", 8},
        Case{"[8, -1, 16, -1]", "lion { lr: 1e-4 momentum_dtype: BF16 }", "FEDTINY", 12}}) {
    SCOPED_TRACE(absl::StrCat(c.layers, " ", c.optimizer, " ", c.pruning));
    Job job = ParseJobText(absl::StrFormat(
                               "model { cnn { layers: %s } } train { steps: 2 } optimizer { %s } "
                               "federated { num_clients: 200 clients_per_round: 2 batch_size: %d "
                               "eval_every: 0 pruning { method: %s density: 0.3 candidates: 2 "
                               "bn_batches: 1 adjust_rounds: 2 } }",
                               c.layers, c.optimizer, c.batch, c.pruning),
                           "fed.pbtxt")
                  .value();
    if (std::string(c.pruning) == "NONE") job.mutable_federated()->clear_pruning();
    job.mutable_output()->set_metrics(dir + c.pruning + ".jsonl");
    FillDefaults(&job);
    ASSERT_TRUE(ValidateJob(job, 1).ok()) << ValidateJob(job, 1);
    absl::StatusOr<MemoryNeed> need = EstimateFederatedJobMemory(job, 1);
    ASSERT_TRUE(need.ok()) << need.status();
    // Fashion-MNIST's 60000 + 10000 images as floats, and the training split's raw bytes.
    EXPECT_EQ(need->data_bytes, 70000 * (784 * 4 + 4) + 60000 * 785);
    EXPECT_GT(need->runner_bytes, 0);
    const int64_t replaced = std::string(c.pruning) == "FEDTINY"
                                 ? core::Cnn::BlockNumels(ToCnnConfig(job.model().cnn())).value()[2]
                                 : 0;  // the head, the largest masked block of [8, -1, 16, -1]

    const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
    core::ResetPeakMemory(core::Device::Cpu());
    // One round (round 0 has FedTiny's first adjustment), without the final test evaluation.
    ASSERT_TRUE(RunFederated(job, {.stop_after = 1, .quiet = true}, world.get()).ok());
    const core::MemoryStats after = core::GetMemoryStats(core::Device::Cpu());
    EXPECT_EQ(after.peak - before.current, need->by_tag.total());
    for (int t = 0; t < core::kNumMemoryTags; ++t) {
      EXPECT_EQ(after.peak_by_tag[t] - before.current_by_tag[t], need->by_tag.bytes[t])
          << core::MemoryTagName(static_cast<core::MemoryTag>(t));
    }
    std::ifstream metrics(dir + c.pruning + ".jsonl");
    std::string line, last;
    while (std::getline(metrics, line)) {
      if (line.find("peak_client_mib") != std::string::npos) last = line;
    }
    const size_t at = last.find("\"peak_client_mib\": ");
    ASSERT_NE(at, std::string::npos) << last;
    const double mib = std::stod(last.substr(at + 19));
    EXPECT_NEAR(mib, (need->by_tag.total() - replaced) / 1048576.0, 0.005 + 1e-9) << last;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace memtrain::launcher
