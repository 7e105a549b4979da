// Peak memory per allocator tag of one step in each model mode: training, training with
// recompute (activation checkpointing), evaluation, and forward-only with 2 lanes (the zeroth-order
// + and - passes). A training step is forward + backward (gradients allocated by the backward);
// the forward-only modes run forwards only. (bench_gpt2 --recompute measures what recompute
// costs in time.)
//
//   bench_modes [--shape 124m|small] [--B 4 --T 64]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_shapes.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "core/threads.h"

using namespace memtrain;

namespace {

void RunMode(const core::GPT2Config& cfg, int B, int T, core::ModelMode mode, int lanes) {
  core::ResetPeakMemory(core::Device::Cpu());
  const core::MemoryStats before = core::GetMemoryStats(core::Device::Cpu());
  auto model = core::GPT2::Create(cfg).value();
  model->InitWeights(1);
  MT_CHECK_OK(model->Prepare({.B = B, .T = T, .mode = mode, .lanes = lanes}));
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[i] = static_cast<int32_t>(core::PhiloxUniform(2, 0, i) * cfg.vocab_size);
    tg[i] = static_cast<int32_t>(core::PhiloxUniform(2, 1, i) * cfg.vocab_size);
  }
  const core::Batch batch{in.data(), tg.data(), B, T};
  core::Engine engine(model.get());
  if (core::IsTrainingMode(mode)) {
    MT_CHECK_OK(engine.Forward(batch));
    MT_CHECK_OK(engine.Backward(batch));
  } else if (mode == core::ModelMode::kEval) {
    MT_CHECK_OK(engine.Forward(batch, core::Pass::kEvalForward));
  } else {
    std::vector<core::Batch> b(lanes, batch);
    MT_CHECK_OK(engine.ForwardLanes(b));
  }
  const core::MemoryStats m = core::GetMemoryStats(core::Device::Cpu());
  auto mib = [&](core::MemoryTag tag) {
    return (m.peak_by_tag[int(tag)] - before.current_by_tag[int(tag)]) / 1048576.0;
  };
  std::printf(
      "| %-21s | %8.1f | %8.1f | %10.1f | %8.1f | %8.1f |\n",
      (std::string(core::ModelModeName(mode)) +
       (mode == core::ModelMode::kForwardOnly ? ", " + std::to_string(lanes) + " lanes" : ""))
          .c_str(),
      mib(core::MemoryTag::kParams), mib(core::MemoryTag::kGrads),
      mib(core::MemoryTag::kActivations), mib(core::MemoryTag::kScratch),
      (m.peak - before.current) / 1048576.0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "124m";
  int B = 0, T = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--shape") == 0) shape = argv[i + 1];
    if (std::strcmp(argv[i], "--B") == 0) B = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--T") == 0) T = std::atoi(argv[i + 1]);
  }
  const int threads = core::InitThreads();
  core::GPT2Config cfg = bench::BenchShape(shape);
  std::vector<std::pair<int, int>> shapes;
  if (B > 0 && T > 0) {
    shapes.push_back({B, T});
  } else if (shape == "small") {
    shapes = {{4, 128}};
  } else {
    shapes = {{4, 64}, {1, 1024}};
  }
  for (auto [b, t] : shapes) {
    std::printf("\n%s, B=%d T=%d, %d threads: peak MiB per tag over one step\n",
                core::GPT2::Create(cfg).value()->config().ToString().c_str(), b, t, threads);
    std::printf("| %-21s | %8s | %8s | %10s | %8s | %8s |\n", "mode", "params", "grads",
                "activation", "scratch", "total");
    std::printf("|---|---:|---:|---:|---:|---:|\n");
    RunMode(cfg, b, t, core::ModelMode::kTrain, 1);
    RunMode(cfg, b, t, core::ModelMode::kTrainRecompute, 1);
    RunMode(cfg, b, t, core::ModelMode::kEval, 1);
    RunMode(cfg, b, t, core::ModelMode::kForwardOnly, 2);
  }
  return 0;
}
