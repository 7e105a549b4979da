// The layer streamer: training with offload (host and SSD tiers, several k, k', prefetch depths,
// optimizers on the host or the device, gradient accumulation, clipping, zeroth-order ZO2) gives
// losses and weights bit-identical to the same run without offload; the device bytes stay at
// the window + resident blocks + activations; bad options, a flipped byte on the SSD and a
// budget too small are clear errors.
#include "offload/streamer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/allocator.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "gtest/gtest.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "optim/zo.h"

namespace memtrain::offload {
namespace {

const core::GPT2Config kConfig{
    .max_seq_len = 32, .vocab_size = 96, .n_layer = 5, .n_head = 2, .n_embd = 32};
constexpr int kB = 2, kT = 16;

enum class Opt { kAdamW, kLion, kLionBf16, kSgd, kZo };

std::unique_ptr<core::GPT2> MakeModel(core::ModelMode mode, int lanes = 1) {
  auto m = core::GPT2::Create(kConfig).value();
  m->InitWeights(7);
  EXPECT_TRUE(m->Prepare({.B = kB, .T = kT, .mode = mode, .lanes = lanes}).ok());
  return m;
}

std::unique_ptr<optim::Optimizer> MakeOpt(Opt o, core::Model* m, optim::StateAllocation alloc) {
  switch (o) {
    case Opt::kAdamW:
      return optim::AdamW::Create(m, {.lr = 1e-2f, .weight_decay = 0.1f}, {}, alloc).value();
    case Opt::kLion:
      return optim::Lion::Create(m, {.lr = 3e-3f, .weight_decay = 0.5f}, {}, alloc).value();
    case Opt::kLionBf16:
      return optim::Lion::Create(m, {.lr = 3e-3f, .bf16_momentum = true}, {}, alloc).value();
    case Opt::kSgd:
      return optim::Sgd::Create(m, {.lr = 5e-2f, .momentum = 0.9f, .weight_decay = 0.01f}, {},
                                alloc)
          .value();
    case Opt::kZo:
      return optim::ZoSgd::Create(m, {.lr = 1e-3f, .eps = 1e-3f, .samples = 2}).value();
  }
  return nullptr;
}

struct Batches {
  std::vector<std::vector<int32_t>> in, tg;
  explicit Batches(int n) {
    for (int b = 0; b < n; ++b) {
      std::vector<int32_t> x(kB * kT), y(kB * kT);
      for (int i = 0; i < kB * kT; ++i) {
        x[i] = (i * 7 + 3 * b + 1) % kConfig.vocab_size;
        y[i] = (i * 5 + 11 * b + 2) % kConfig.vocab_size;
      }
      in.push_back(x);
      tg.push_back(y);
    }
  }
  core::Batch at(int i) const { return {in[i].data(), tg[i].data(), kB, kT}; }
};

struct RunResult {
  std::vector<float> losses;
  std::vector<std::vector<float>> params;  // per block
  std::vector<std::vector<char>> state;    // per block, all state tensors
};

std::vector<float> ToVec(const core::Tensor& t) {
  const float* p = t.f32();
  return std::vector<float>(p, p + t.numel());
}

void Snapshot(core::Model& m, const optim::Optimizer& opt, RunResult* r) {
  for (int s = 0; s < m.num_stages(); ++s) {
    r->params.push_back(ToVec(m.block(s).params()));
    std::vector<char> st;
    for (const auto& [name, t] : opt.State(s)) {
      const char* p = static_cast<const char*>(t.raw());
      st.insert(st.end(), p, p + t.nbytes());
    }
    r->state.push_back(st);
  }
}

struct Case {
  std::string name;
  Opt opt = Opt::kAdamW;
  StreamerOptions so;
  int accum = 1;
  float clip = 0.0f;
  bool eval = false;  // an evaluation forward between steps
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Trains `steps` steps with or without offload; backprop (or ZO for Opt::kZo).
RunResult Train(const Case& c, bool offload, int steps = 4) {
  const bool zo = c.opt == Opt::kZo;
  auto model = MakeModel(zo ? core::ModelMode::kForwardOnly : core::ModelMode::kTrain, zo ? 4 : 1);
  auto opt = MakeOpt(c.opt, model.get(),
                     offload && c.so.optimizer_on_host ? optim::StateAllocation::kLater
                                                       : optim::StateAllocation::kNow);
  core::Engine engine(model.get());
  std::unique_ptr<LayerStreamer> streamer;
  if (offload) {
    StreamerOptions so = c.so;
    so.gradients = !zo;
    auto created = LayerStreamer::Create(model.get(), opt.get(), so);
    EXPECT_TRUE(created.ok()) << created.status();
    if (!created.ok()) return {};
    streamer = std::move(*created);
    engine.AddHooks(streamer.get());
  }
  Batches data(steps * c.accum + 1);
  RunResult r;
  auto* zo_opt = dynamic_cast<optim::ZoSgd*>(opt.get());
  for (int step = 0; step < steps; ++step) {
    if (zo) {
      auto res = zo_opt->Step(engine, data.at(step), optim::ZoStepSeed(5, step));
      EXPECT_TRUE(res.ok()) << res.status();
      r.losses.push_back(static_cast<float>(res->loss()));
    } else {
      engine.ZeroGrad();
      float loss = 0;
      for (int a = 0; a < c.accum; ++a) {
        EXPECT_TRUE(engine.Forward(data.at(step * c.accum + a)).ok());
        loss += engine.Loss();
        EXPECT_TRUE(engine.Backward(data.at(step * c.accum + a), 1.0f / c.accum).ok());
      }
      const double norm = offload ? streamer->GradNorm() : optim::GlobalGradNorm(*model);
      r.losses.push_back(loss);
      r.losses.push_back(static_cast<float>(norm));
      opt->Step(optim::ClipScale(norm, c.clip));
      if (offload) {
        EXPECT_TRUE(streamer->status().ok()) << streamer->status();
      }
    }
    if (c.eval) {
      EXPECT_TRUE(engine.Forward(data.at(steps * c.accum), core::Pass::kEvalForward).ok());
      r.losses.push_back(engine.Loss());
    }
  }
  if (offload) {
    EXPECT_TRUE(streamer->BindHostCopies().ok());
    Snapshot(*model, *opt, &r);
    EXPECT_TRUE(streamer->UnbindHostCopies(false).ok());
  } else {
    Snapshot(*model, *opt, &r);
  }
  return r;
}

// A folder of this test process's own: ctest runs the tests of this file in parallel processes,
// and each checks that its streamer leaves nothing behind.
std::string TmpDir() {
  const std::string d =
      ::testing::TempDir() + "/memtrain_streamer_test." + std::to_string(::getpid());
  std::filesystem::create_directories(d);
  return d;
}

// Removes this process's folder at the end (empty: every streamer removed its file).
class RemoveTmpDir : public ::testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove(TmpDir()); }
};
const ::testing::Environment* const kRemoveTmpDir =
    ::testing::AddGlobalTestEnvironment(new RemoveTmpDir);

class BitIdentical : public ::testing::TestWithParam<Case> {};

TEST_P(BitIdentical, LossesWeightsAndStateEqualTheRunWithoutOffload) {
  Case c = GetParam();
  if (c.so.tier == Tier::kSsd) c.so.ssd_path = TmpDir();
  const RunResult ref = Train(c, false);
  const RunResult got = Train(c, true);
  ASSERT_EQ(got.losses.size(), ref.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i) {
    EXPECT_EQ(got.losses[i], ref.losses[i]) << "value " << i;
  }
  ASSERT_EQ(got.params.size(), ref.params.size());
  for (size_t s = 0; s < ref.params.size(); ++s) {
    EXPECT_EQ(got.params[s], ref.params[s]) << "params of block " << s;
    EXPECT_EQ(got.state[s], ref.state[s]) << "optimizer state of block " << s;
  }
  EXPECT_TRUE(std::filesystem::is_empty(TmpDir())) << "a file was left behind";
  std::filesystem::remove(TmpDir());
}

StreamerOptions So(Tier tier, int k, int kp, int d, bool on_host = true, int64_t piece = 16 << 20) {
  StreamerOptions o;
  o.tier = tier;
  o.resident_blocks = k;
  o.swap_batch = kp;
  o.prefetch_depth = d;
  o.optimizer_on_host = on_host;
  o.piece_bytes = piece;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Streamer, BitIdentical,
    ::testing::Values(
        Case{"host_adamw_k2", Opt::kAdamW, So(Tier::kHost, 2, 1, 1)},
        Case{"host_adamw_k3_batch2_depth2", Opt::kAdamW, So(Tier::kHost, 3, 2, 2)},
        Case{"host_adamw_k4_batch4_depth0", Opt::kAdamW, So(Tier::kHost, 4, 4, 0)},
        Case{"host_lion_accum2_clip", Opt::kLion, So(Tier::kHost, 2, 2, 1), 2, 0.05f},
        Case{"host_lion_bf16", Opt::kLionBf16, So(Tier::kHost, 3, 1, 2)},
        Case{"host_sgd_on_device", Opt::kSgd, So(Tier::kHost, 2, 1, 1, false)},
        Case{"host_adamw_on_device_eval", Opt::kAdamW, So(Tier::kHost, 3, 1, 1, false), 1, 0, true},
        Case{"ssd_adamw_k2", Opt::kAdamW, So(Tier::kSsd, 2, 1, 1)},
        Case{"ssd_adamw_pieces_accum2_eval", Opt::kAdamW, So(Tier::kSsd, 3, 1, 2, true, 4096), 2,
             1.0f, true},
        Case{"ssd_lion_bf16_pieces", Opt::kLionBf16, So(Tier::kSsd, 2, 2, 1, true, 8192)},
        Case{"ssd_sgd_on_device", Opt::kSgd, So(Tier::kSsd, 3, 3, 2, false)},
        Case{"host_zo", Opt::kZo, So(Tier::kHost, 1, 1, 0)},
        Case{"host_zo_k3_depth2_eval", Opt::kZo, So(Tier::kHost, 3, 2, 2), 1, 0, true},
        Case{"ssd_zo_pieces", Opt::kZo, So(Tier::kSsd, 2, 1, 1, true, 4096), 1, 0, true}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// ---- what the window costs ----------------------------------------------------------------------

TEST(StreamerMemory, PeakDeviceBytesAreTheWindowResidentBlocksAndActivations) {
  core::ResetPeakMemory(core::Device::Cpu());
  const int64_t before = core::GetMemoryStats(core::Device::Cpu()).current;
  Case c{"", Opt::kAdamW, So(Tier::kHost, 2, 1, 1)};
  auto model = MakeModel(core::ModelMode::kTrain);
  auto opt = MakeOpt(Opt::kAdamW, model.get(), optim::StateAllocation::kLater);
  const core::MemoryStats m0 = core::GetMemoryStats(core::Device::Cpu());
  const int64_t activations = m0.current_by_tag[static_cast<int>(core::MemoryTag::kActivations)] +
                              m0.current_by_tag[static_cast<int>(core::MemoryTag::kScratch)];
  auto streamer = LayerStreamer::Create(model.get(), opt.get(), c.so).value();
  core::Engine engine(model.get());
  engine.AddHooks(streamer.get());
  core::ResetPeakMemory(core::Device::Cpu());
  Batches data(2);
  for (int step = 0; step < 2; ++step) {
    engine.ZeroGrad();
    ASSERT_TRUE(engine.Forward(data.at(step)).ok());
    ASSERT_TRUE(engine.Backward(data.at(step)).ok());
    opt->Step(1.0f);
    ASSERT_TRUE(streamer->status().ok());
  }
  const core::MemoryStats m = core::GetMemoryStats(core::Device::Cpu());
  const int64_t layer = model->block(1).numel() * 4;
  const int64_t resident =
      (model->block(0).numel() + model->block(model->num_stages() - 1).numel()) * 4 * 2;
  const int64_t formula = 2 * 2 * layer + resident + activations;
  EXPECT_EQ(streamer->window_bytes(), 2 * 2 * layer);
  EXPECT_LE(m.peak - before, formula) << "peak device bytes above k blocks + resident + acts";
  EXPECT_EQ(m.peak_by_tag[static_cast<int>(core::MemoryTag::kOptimizer)], 0)
      << "optimizer_on_host must keep the state off the device";
}

TEST(StreamerMemory, TooSmallABudgetIsRefusedWithTheSmallestThatWorks) {
  auto model = MakeModel(core::ModelMode::kTrain);
  auto opt = MakeOpt(Opt::kAdamW, model.get(), optim::StateAllocation::kLater);
  const core::MemoryStats m0 = core::GetMemoryStats(core::Device::Cpu());
  const int64_t streamed = (model->num_stages() - 2) * model->block(1).numel() * 4;
  // Enough once the streamed blocks are gone, one byte short of the window.
  const int64_t window = WindowBytes(*model, So(Tier::kHost, 3, 1, 1));
  const int64_t resident_grads =
      (model->block(0).numel() + model->block(model->num_stages() - 1).numel()) * 4;
  const int64_t smallest = m0.current - streamed + window + resident_grads;
  core::SetMemoryBudget(core::Device::Cpu(), smallest - 1);
  auto bad = LayerStreamer::Create(model.get(), opt.get(), So(Tier::kHost, 3, 1, 1));
  core::SetMemoryBudget(core::Device::Cpu(), 0);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(bad.status().message().find(absl::StrFormat("%.1f MiB", smallest / 1048576.0)),
            std::string::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find("resident_blocks"), std::string::npos);
}

// ---- errors -------------------------------------------------------------------------------------

TEST(StreamerErrors, BadOptionsNameTheField) {
  auto model = MakeModel(core::ModelMode::kTrain);
  auto opt = MakeOpt(Opt::kAdamW, model.get(), optim::StateAllocation::kLater);
  struct Bad {
    StreamerOptions o;
    const char* field;
  } bad[] = {
      {So(Tier::kHost, 1, 1, 0), "resident_blocks"},  // k >= 2 with gradients
      {So(Tier::kHost, 2, 3, 0), "swap_batch"},       // k' > k
      {So(Tier::kHost, 2, 1, 2), "prefetch_depth"},   // depth > k - 1
      {So(Tier::kSsd, 2, 1, 1), "ssd_path"},          // no directory
      {So(Tier::kSsd, 2, 1, 1, true, 1000), "piece_bytes"},
  };
  for (const Bad& b : bad) {
    auto s = LayerStreamer::Create(model.get(), opt.get(), b.o);
    ASSERT_FALSE(s.ok()) << b.field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(b.field), std::string::npos) << s.status();
  }
  // Nothing was moved: the model still trains on its own storage.
  core::Engine engine(model.get());
  Batches data(1);
  EXPECT_TRUE(engine.Forward(data.at(0)).ok());
}

TEST(StreamerErrors, MissingDirectoryIsNotFound) {
  auto model = MakeModel(core::ModelMode::kTrain);
  auto opt = MakeOpt(Opt::kAdamW, model.get(), optim::StateAllocation::kLater);
  StreamerOptions o = So(Tier::kSsd, 2, 1, 1);
  o.ssd_path = TmpDir() + "/does/not/exist";
  auto s = LayerStreamer::Create(model.get(), opt.get(), o);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("does/not/exist"), std::string::npos) << s.status();
}

TEST(StreamerErrors, AFlippedByteOnTheSsdIsDataLossNamingBlockFileAndOffset) {
  auto model = MakeModel(core::ModelMode::kTrain);
  auto opt = MakeOpt(Opt::kAdamW, model.get(), optim::StateAllocation::kLater);
  StreamerOptions o = So(Tier::kSsd, 2, 1, 0);
  o.ssd_path = TmpDir();
  auto streamer = LayerStreamer::Create(model.get(), opt.get(), o).value();
  // Block h.2 (stage 3): its params are the first piece the streamer wrote for that stage.
  const std::string file = streamer->ssd_file();
  const int64_t offset = streamer->ssd_offset(3) + 100;
  {
    const int fd = ::open(file.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char byte = 0;
    ASSERT_EQ(::pread(fd, &byte, 1, offset), 1);
    byte ^= 0x10;
    ASSERT_EQ(::pwrite(fd, &byte, 1, offset), 1);
    ::fsync(fd);
    ::close(fd);
  }
  core::Engine engine(model.get());
  engine.AddHooks(streamer.get());
  Batches data(1);
  const absl::Status s = engine.Forward(data.at(0));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("h.2"), std::string::npos) << s;
  EXPECT_NE(s.message().find(file), std::string::npos) << s;
  EXPECT_NE(s.message().find("offset"), std::string::npos) << s;
}

}  // namespace
}  // namespace memtrain::offload
