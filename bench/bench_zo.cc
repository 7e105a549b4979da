// Zeroth-order (MeZO) step against a backprop AdamW step, in one run on one model shape:
//   - peak memory per allocator tag of one AdamW step (forward + backward + update, the model
//     prepared for training) and of one ZO step (two perturbed forward lanes + update, the model
//     prepared forward-only), and their ratio;
//   - the time of a ZO step against the time of the same two forward lanes without the
//     perturbation (the floor a ZO step cannot beat), and the noise generator's throughput.
// (The speed-up of perturbation parallelism is measured by bench/bench_zo_parallel.sh through
// the trainer.)
//
//   bench_zo [--shape 124m|small] [--B 4] [--T 256] [--steps 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_shapes.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "core/threads.h"
#include "optim/adamw.h"
#include "optim/zo.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Batch {
  std::vector<int32_t> in, tg;
  core::Batch batch;
};

Batch MakeBatch(const core::GPT2Config& cfg, int B, int T) {
  Batch b;
  b.in.resize(size_t(B) * T);
  b.tg.resize(size_t(B) * T);
  for (int i = 0; i < B * T; ++i) {
    b.in[i] = static_cast<int32_t>(core::PhiloxUniform(2, 0, i) * cfg.vocab_size);
    b.tg[i] = static_cast<int32_t>(core::PhiloxUniform(2, 1, i) * cfg.vocab_size);
  }
  b.batch = core::Batch{b.in.data(), b.tg.data(), B, T};
  return b;
}

struct Peak {
  double params, grads, optimizer, activations, scratch, total;
};

Peak PeakSince(const core::MemoryStats& before) {
  const core::MemoryStats m = core::GetMemoryStats(core::Device::Cpu());
  auto mib = [&](core::MemoryTag tag) {
    return (m.peak_by_tag[int(tag)] - before.current_by_tag[int(tag)]) / 1048576.0;
  };
  return {mib(core::MemoryTag::kParams),    mib(core::MemoryTag::kGrads),
          mib(core::MemoryTag::kOptimizer), mib(core::MemoryTag::kActivations),
          mib(core::MemoryTag::kScratch),   (m.peak - before.current) / 1048576.0};
}

void PrintPeak(const char* label, const Peak& p) {
  std::printf("| %-22s | %8.1f | %8.1f | %9.1f | %10.1f | %8.1f | %8.1f |\n", label, p.params,
              p.grads, p.optimizer, p.activations, p.scratch, p.total);
}

// One AdamW step: its peak memory (the time is bench_gpt2's business).
Peak BackpropPeak(const core::GPT2Config& cfg, const core::Batch& batch) {
  core::ResetPeakMemory(core::Device::Cpu());
  const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
  auto model = core::GPT2::Create(cfg).value();
  model->InitWeights(1);
  MT_CHECK_OK(model->Prepare({.B = batch.B, .T = batch.T, .mode = core::ModelMode::kTrain}));
  auto opt = optim::AdamW::Create(model.get(), {.lr = 1e-4f, .weight_decay = 0.1f}).value();
  core::Engine engine(model.get());
  MT_CHECK_OK(engine.Forward(batch));
  engine.ZeroGrad();
  MT_CHECK_OK(engine.Backward(batch));
  opt->Step();
  return PeakSince(before);
}

struct ZoFigures {
  Peak peak;
  double step_s, lanes_s, ratio;
};

ZoFigures Zo(const core::GPT2Config& cfg, const core::Batch& batch, int steps) {
  core::ResetPeakMemory(core::Device::Cpu());
  const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
  auto model = core::GPT2::Create(cfg).value();
  model->InitWeights(1);
  MT_CHECK_OK(model->Prepare(
      {.B = batch.B, .T = batch.T, .mode = core::ModelMode::kForwardOnly, .lanes = 2}));
  auto zo = optim::ZoSgd::Create(model.get(), {.lr = 1e-6f, .eps = 1e-3f}).value();
  core::Engine engine(model.get());
  MT_CHECK_OK(zo->Step(engine, batch, optim::ZoStepSeed(1, 0)).status());  // warm-up
  ZoFigures f;
  f.peak = PeakSince(before);
  // Alternating pairs (a ZO step, then the same two lanes unperturbed), so that a drifting
  // machine moves both alike; the ratio is the median of the pairs' ratios.
  const std::vector<core::Batch> two(2, batch);
  std::vector<double> step, lanes, ratio;
  for (int s = 1; s <= steps; ++s) {
    auto t0 = Clock::now();
    MT_CHECK_OK(zo->Step(engine, batch, optim::ZoStepSeed(1, s)).status());
    auto t1 = Clock::now();
    MT_CHECK_OK(engine.ForwardLanes(two));
    auto t2 = Clock::now();
    step.push_back(Seconds(t0, t1));
    lanes.push_back(Seconds(t1, t2));
    ratio.push_back(step.back() / lanes.back());
  }
  f.step_s = Median(step);
  f.lanes_s = Median(lanes);
  f.ratio = Median(ratio);
  return f;
}

// Normals per second of the backend's generator over n elements.
double NormalsPerSecond(int64_t n) {
  std::vector<float> x(n);
  core::Backend& be = core::BackendFor(core::Device::Cpu());
  const core::ExecContext ctx;
  std::vector<double> t;
  for (int r = 0; r < 4; ++r) {
    auto t0 = Clock::now();
    be.FillNormal(ctx, x.data(), n, 7, r, 0, 0.0f, 1.0f);
    if (r > 0) t.push_back(Seconds(t0, Clock::now()));
  }
  return n / Median(t);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "124m";
  int B = 4, T = 256, steps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--shape") == 0) shape = argv[i + 1];
    if (std::strcmp(argv[i], "--B") == 0) B = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--T") == 0) T = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::max(1, std::atoi(argv[i + 1]));
  }
  const int threads = core::InitThreads();
  const core::GPT2Config cfg = bench::BenchShape(shape);
  Batch b = MakeBatch(cfg, B, T);
  const int64_t params = core::GPT2::Create(cfg).value()->num_parameters();
  std::printf("%s, %lld parameters, B=%d T=%d, %d threads\n",
              core::GPT2::Create(cfg).value()->config().ToString().c_str(),
              static_cast<long long>(params), B, T, threads);
  std::printf("\npeak MiB per tag over one step\n");
  std::printf("| %-22s | %8s | %8s | %9s | %10s | %8s | %8s |\n", "step", "params", "grads",
              "optimizer", "activation", "scratch", "total");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  const Peak bp = BackpropPeak(cfg, b.batch);
  PrintPeak("backprop + AdamW", bp);
  const ZoFigures zo = Zo(cfg, b.batch, steps);
  PrintPeak("ZO-SGD (2 lanes)", zo.peak);
  std::printf("\nZO peak / backprop peak: %.3f (target <= 0.333)\n", zo.peak.total / bp.total);
  std::printf(
      "ZO step %.1f ms, 2 forward lanes %.1f ms (medians): ratio %.3f (target <= 1.2), median of "
      "%d alternating pairs\n",
      1e3 * zo.step_s, 1e3 * zo.lanes_s, zo.ratio, steps);
  const double nps = NormalsPerSecond(std::min<int64_t>(params, 1 << 24));
  // Per parameter and step: one draw per sample for its two lanes (the noise cache) and one for
  // the update.
  std::printf("noise: %.1f M normals/s; 2 per parameter per step = %.1f ms of the step\n",
              nps / 1e6, 2e3 * params / nps);
  return 0;
}
