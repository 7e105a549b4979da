// The core interfaces the features build on: model modes (training, recompute, evaluation,
// forward-only lanes), lazy gradients, storage binding, block buffers, masks, hook events with
// status and hook ordering by role.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "core/model/gpt2.h"

namespace memtrain::core {
namespace {

GPT2Config Tiny() {
  return {.max_seq_len = 16, .vocab_size = 40, .n_layer = 3, .n_head = 2, .n_embd = 16};
}

struct Data {
  std::vector<int32_t> in, tg;
  Batch batch;
};

Data MakeData(int B, int T, int salt = 0) {
  Data d;
  for (int i = 0; i < B * T; ++i) {
    d.in.push_back((i * 7 + salt) % 40);
    d.tg.push_back((i * 5 + 3 + salt) % 40);
  }
  d.tg[1] = -1;  // an ignored position
  d.batch = {d.in.data(), d.tg.data(), B, T};
  return d;
}

std::unique_ptr<GPT2> MakeModel() {
  auto m = GPT2::Create(Tiny()).value();
  m->InitWeights(11);
  return m;
}

std::vector<float> Flat(const Tensor& t) {
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

std::vector<std::vector<float>> AllGrads(Model& m) {
  std::vector<std::vector<float>> g;
  for (int s = 0; s < m.num_stages(); ++s) g.push_back(Flat(m.block(s).grads()));
  return g;
}

std::vector<std::vector<float>> AllParams(Model& m) {
  std::vector<std::vector<float>> p;
  for (int s = 0; s < m.num_stages(); ++s) p.push_back(Flat(m.block(s).params()));
  return p;
}

// Plain SGD on every block: enough to show that training follows the bound storage.
void SgdStep(Model& m, float lr) {
  for (int s = 0; s < m.num_stages(); ++s) {
    const ParamBlock& b = m.block(s);
    float* p = b.params().f32();
    const float* g = b.grads().f32();
    for (int64_t i = 0; i < b.numel(); ++i) p[i] -= lr * g[i];
  }
}

TEST(ModelModesTest, ForwardOnlyAllocatesNoGradientsAndLessActivation) {
  ResetPeakMemory(Device::Cpu());
  const int64_t grads_before = GetMemoryStats(Device::Cpu()).current_by_tag[int(MemoryTag::kGrads)];
  auto m = MakeModel();
  ASSERT_TRUE(m->Prepare({.B = 2, .T = 16, .mode = ModelMode::kTrain}).ok());
  const int64_t train_bytes = m->activation_bytes();
  ASSERT_TRUE(m->Prepare({.B = 2, .T = 16, .mode = ModelMode::kEval}).ok());
  const int64_t eval_bytes = m->activation_bytes();
  EXPECT_LT(eval_bytes * 2, train_bytes);
  Engine engine(m.get());
  Data d = MakeData(2, 16);
  ASSERT_TRUE(engine.Forward(d.batch, Pass::kEvalForward).ok());
  EXPECT_GT(engine.Loss(), 0.0f);
  for (int s = 0; s < m->num_stages(); ++s) EXPECT_FALSE(m->block(s).grads().defined());
  MemoryStats st = GetMemoryStats(Device::Cpu());
  EXPECT_EQ(st.current_by_tag[int(MemoryTag::kGrads)], grads_before);
  EXPECT_EQ(st.current_by_tag[int(MemoryTag::kScratch)], 0);  // no backward scratch
  // A training forward or a backward is refused in this mode, with a message saying what to do.
  absl::Status s = engine.Forward(d.batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("kTrain"), std::string::npos) << s;
  EXPECT_EQ(engine.Backward(d.batch).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ModelModesTest, EvalAndLanesGiveTheTrainingModeLosses) {
  auto m = MakeModel();
  Data a = MakeData(2, 16, 0), b = MakeData(2, 16, 9);
  Engine engine(m.get());
  ASSERT_TRUE(m->Prepare({.B = 2, .T = 16}).ok());
  ASSERT_TRUE(engine.Forward(a.batch).ok());
  const float la = engine.Loss();
  ASSERT_TRUE(engine.Forward(b.batch).ok());
  const float lb = engine.Loss();
  ASSERT_TRUE(m->Prepare({.B = 2, .T = 16, .mode = ModelMode::kEval}).ok());
  ASSERT_TRUE(engine.Forward(a.batch, Pass::kEvalForward).ok());
  EXPECT_EQ(engine.Loss(), la);
  ASSERT_TRUE(m->Prepare({.B = 2, .T = 16, .mode = ModelMode::kForwardOnly, .lanes = 2}).ok());
  const Batch lanes[] = {a.batch, b.batch};
  ASSERT_TRUE(engine.ForwardLanes(lanes).ok());
  EXPECT_EQ(engine.Loss(0), la);
  EXPECT_EQ(engine.Loss(1), lb);
  // More lanes than prepared: a clear error.
  const Batch three[] = {a.batch, b.batch, a.batch};
  EXPECT_EQ(engine.ForwardLanes(three).code(), absl::StatusCode::kFailedPrecondition);
}

class LogHooks : public StageHooks {
 public:
  LogHooks(std::string name, HookRole role, std::vector<std::string>* log)
      : name_(std::move(name)), role_(role), log_(log) {}
  HookRole role() const override { return role_; }
  absl::Status BeginPass(const PassEvent& e) override {
    log_->push_back(absl::StrCat(name_, ":begin ", PassName(e.pass)));
    return absl::OkStatus();
  }
  absl::Status BeforeForward(const StageEvent& e) override {
    log_->push_back(absl::StrCat(name_, ":F", e.stage, ".", e.lane));
    if (fail_forward_at == e.stage) return absl::DataLossError("block read failed");
    return absl::OkStatus();
  }
  absl::Status AfterBackward(const StageEvent& e) override {
    log_->push_back(absl::StrCat(name_, ":B", e.stage));
    if (fail_backward_at == e.stage) return absl::UnavailableError("collective failed");
    return absl::OkStatus();
  }
  absl::Status WaitStage(int stage) override {
    log_->push_back(absl::StrCat(name_, ":wait", stage));
    return absl::OkStatus();
  }
  int fail_forward_at = -1, fail_backward_at = -1;

 private:
  std::string name_;
  HookRole role_;
  std::vector<std::string>* log_;
};

TEST(HooksTest, LanesAdvanceBlockByBlockAndEventsCarryThePass) {
  auto m = MakeModel();
  ASSERT_TRUE(m->Prepare({.B = 1, .T = 8, .mode = ModelMode::kForwardOnly, .lanes = 2}).ok());
  Data a = MakeData(1, 8);
  std::vector<std::string> log;
  LogHooks h("h", HookRole::kObserve, &log);
  Engine engine(m.get());
  engine.AddHooks(&h);
  const Batch lanes[] = {a.batch, a.batch};
  ASSERT_TRUE(engine.ForwardLanes(lanes).ok());
  EXPECT_EQ(
      log, (std::vector<std::string>{"h:begin lane forward", "h:F0.0", "h:F0.1", "h:F1.0", "h:F1.1",
                                     "h:F2.0", "h:F2.1", "h:F3.0", "h:F3.1", "h:F4.0", "h:F4.1"}));
}

TEST(HooksTest, AFailingHookStopsTheEngineWithItsStatus) {
  auto m = MakeModel();
  ASSERT_TRUE(m->Prepare(2, 8).ok());
  Data d = MakeData(2, 8);
  std::vector<std::string> log;
  LogHooks h("h", HookRole::kMemory, &log);
  Engine engine(m.get());
  engine.AddHooks(&h);
  h.fail_forward_at = 2;
  absl::Status s = engine.Forward(d.batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "block read failed");
  EXPECT_EQ(log.back(), "h:F2.0");  // no stage after the failing one ran
  // A failed forward cannot be followed by a backward.
  EXPECT_EQ(engine.Backward(d.batch).code(), absl::StatusCode::kFailedPrecondition);
  h.fail_forward_at = -1;
  h.fail_backward_at = 3;
  ASSERT_TRUE(engine.Forward(d.batch).ok());
  log.clear();
  s = engine.Backward(d.batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(log.back(), "h:B3");
}

TEST(HooksTest, RolesOrderHooksWhateverTheOrderOfAdding) {
  auto m = MakeModel();
  ASSERT_TRUE(m->Prepare(2, 8).ok());
  Data d = MakeData(2, 8);
  std::vector<std::string> log;
  LogHooks reader("reader", HookRole::kReducedGradients, &log);
  LogHooks comm("comm", HookRole::kCommunicate, &log);
  LogHooks scaler("scaler", HookRole::kGradients, &log);
  LogHooks mem("mem", HookRole::kMemory, &log);
  Engine engine(m.get());
  // Added in the hazardous order: the reader and the gradient changer after the communicator.
  engine.AddHooks(&reader);
  engine.AddHooks(&comm);
  engine.AddHooks(&scaler);
  engine.AddHooks(&mem);
  ASSERT_TRUE(engine.Forward(d.batch).ok());
  log.clear();
  ASSERT_TRUE(engine.Backward(d.batch).ok());
  // Stage s: the changer before the communicator; the reader of stage s only after waiting for
  // stage s, one stage later (stage s-1's backward is already issued); memory after everyone.
  const std::vector<std::string> want = {"mem:begin backward",
                                         "scaler:begin backward",
                                         "comm:begin backward",
                                         "reader:begin backward",
                                         "scaler:B4",
                                         "comm:B4",
                                         "scaler:B3",
                                         "comm:B3",
                                         "comm:wait4",
                                         "reader:B4",
                                         "mem:B4",
                                         "scaler:B2",
                                         "comm:B2",
                                         "comm:wait3",
                                         "reader:B3",
                                         "mem:B3",
                                         "scaler:B1",
                                         "comm:B1",
                                         "comm:wait2",
                                         "reader:B2",
                                         "mem:B2",
                                         "scaler:B0",
                                         "comm:B0",
                                         "comm:wait1",
                                         "reader:B1",
                                         "mem:B1",
                                         "comm:wait0",
                                         "reader:B0",
                                         "mem:B0"};
  EXPECT_EQ(log, want);
}

TEST(ModelModesTest, RecomputeGivesBitIdenticalGradientsWithFewerActivationBytes) {
  Data d = MakeData(2, 16);
  auto run = [&](ModelMode mode, int64_t* act_peak) {
    auto m = MakeModel();
    ResetPeakMemory(Device::Cpu());
    const int64_t base = GetMemoryStats(Device::Cpu()).current_by_tag[int(MemoryTag::kActivations)];
    EXPECT_TRUE(m->Prepare({.B = 2, .T = 16, .mode = mode}).ok());
    Engine engine(m.get());
    for (int step = 0; step < 3; ++step) {
      EXPECT_TRUE(engine.Forward(d.batch).ok());
      engine.ZeroGrad();
      EXPECT_TRUE(engine.Backward(d.batch).ok());
      SgdStep(*m, 0.1f);
    }
    *act_peak = GetMemoryStats(Device::Cpu()).peak_by_tag[int(MemoryTag::kActivations)] - base;
    return std::make_pair(AllGrads(*m), AllParams(*m));
  };
  int64_t full = 0, recompute = 0;
  auto a = run(ModelMode::kTrain, &full);
  auto b = run(ModelMode::kTrainRecompute, &recompute);
  EXPECT_EQ(a.first, b.first);    // bit-identical gradients
  EXPECT_EQ(a.second, b.second);  // and weights after 3 steps
  EXPECT_LT(recompute, full * 3 / 4) << recompute << " vs " << full;
}

TEST(ParamBlockTest, GradientsAreLazyAndReleasable) {
  auto m = MakeModel();
  EXPECT_FALSE(m->block(1).grads().defined());
  const int64_t before = GetMemoryStats(Device::Cpu()).current_by_tag[int(MemoryTag::kGrads)];
  ASSERT_TRUE(m->Prepare(2, 8).ok());
  Data d = MakeData(2, 8);
  Engine engine(m.get());
  ASSERT_TRUE(engine.Forward(d.batch).ok());
  ASSERT_TRUE(engine.Backward(d.batch).ok());
  const int64_t with = GetMemoryStats(Device::Cpu()).current_by_tag[int(MemoryTag::kGrads)];
  EXPECT_EQ(with - before, m->num_parameters() * 4);
  engine.ReleaseGrads();
  EXPECT_EQ(GetMemoryStats(Device::Cpu()).current_by_tag[int(MemoryTag::kGrads)], before);
}

TEST(ParamBlockTest, BindingToAnotherBufferAndBackTrainsBitIdentically) {
  Data d = MakeData(2, 8);
  auto ref = MakeModel();
  auto m = MakeModel();
  ASSERT_TRUE(ref->Prepare(2, 8).ok());
  ASSERT_TRUE(m->Prepare(2, 8).ok());
  Engine er(ref.get()), em(m.get());
  auto step = [&](Engine& e, Model& model) {
    ASSERT_TRUE(e.Forward(d.batch).ok());
    e.ZeroGrad();
    ASSERT_TRUE(e.Backward(d.batch).ok());
    SgdStep(model, 0.05f);
  };
  for (int i = 0; i < 4; ++i) step(er, *ref);

  step(em, *m);
  // Steps 2 and 3 run with block 2's params and grads in other buffers (a pool slot, a client
  // copy), then the block goes back to its own storage with the trained values.
  ParamBlock& blk = m->block(2);
  BlockBuffer slot = BlockBuffer::Like(blk).value();
  BlockBuffer gslot = BlockBuffer::Like(blk).value();
  slot.CopyFrom(blk.params());
  const float* own = blk.params().f32();
  ASSERT_TRUE(blk.BindParams(slot.data()).ok());
  ASSERT_TRUE(blk.BindGrads(gslot.data()).ok());
  EXPECT_TRUE(blk.params_bound());
  EXPECT_EQ(blk.param("qkvw").f32(), slot.view("qkvw").f32());
  step(em, *m);
  step(em, *m);
  blk.UnbindParams();
  blk.UnbindGrads();
  EXPECT_EQ(blk.params().f32(), own);
  blk.params().CopyFrom(slot.data());
  step(em, *m);
  EXPECT_EQ(AllParams(*ref), AllParams(*m));
  // Wrong size is refused with the block's name.
  Tensor small = Tensor::Zeros({5}, DType::kF32, MemoryTag::kOther).value();
  absl::Status s = blk.BindParams(small);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("h.1"), std::string::npos) << s;
}

TEST(ParamBlockTest, BuffersSumInDoubleAndMasksZeroWeights) {
  auto m = MakeModel();
  ParamBlock& blk = m->block(1);
  BlockBuffer acc = BlockBuffer::Like(blk, DType::kF64).value();
  BlockBuffer x = BlockBuffer::Like(blk).value();
  x.CopyFrom(blk.params());
  acc.AddWeighted(0.25, x.data());
  acc.AddWeighted(0.5, blk.params());
  BlockBuffer out = BlockBuffer::Like(blk).value();
  acc.WriteScaled(out.data(), 2.0);
  for (int64_t i = 0; i < blk.numel(); i += 97) {
    const double want = (0.25 * double(blk.params().f32()[i]) + 0.5 * blk.params().f32()[i]) * 2.0;
    EXPECT_EQ(out.data().f32()[i], static_cast<float>(want));
  }
  x.Axpy(-1.0f, blk.params());
  for (int64_t i = 0; i < blk.numel(); i += 97) EXPECT_EQ(x.data().f32()[i], 0.0f);

  Tensor mask = Tensor::Zeros({blk.numel()}, DType::kU8, MemoryTag::kOther).value();
  uint8_t* mk = static_cast<uint8_t*>(mask.raw());
  for (int64_t i = 0; i < blk.numel(); ++i) mk[i] = i % 3 != 0;
  ASSERT_TRUE(blk.SetMask(mask).ok());
  for (int64_t i = 0; i < blk.numel(); ++i) {
    if (i % 3 == 0) ASSERT_EQ(blk.params().f32()[i], 0.0f) << i;
  }
  EXPECT_EQ(blk.SetMask(Tensor::Zeros({3}, DType::kU8, MemoryTag::kOther).value()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ModelTest, BlocksAreFoundByName) {
  auto m = MakeModel();
  EXPECT_EQ(m->FindBlock("h.1").value(), 2);
  EXPECT_EQ(m->FindBlock("head").value(), 4);
  absl::StatusOr<int> missing = m->FindBlock("h.9");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("embedding, h.0"), std::string::npos);
}

}  // namespace
}  // namespace memtrain::core
