// GPT-2 training-step benchmark. Measures, in one run: this machine's cblas_sgemm peak
// (2048^3), then for each shape the time of a full step (forward + backward + AdamW), tokens/s,
// achieved GFLOP/s and that as a fraction of the sgemm peak, and peak bytes per category.
//
//   bench_gpt2 [--shape all|124m|small] [--steps N]
//
// FLOPs counted per step: 3 x forward, forward = 2*B*T*(L*12*C^2 + Vp*C) for the matrix products
// plus 2*B*T*(T+1)*C*L for causal attention (QK^T and PV over the lower triangle).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "core/threads.h"
#include "optim/adamw.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double SgemmPeakGflops() {
  const int n = 2048;
  std::vector<float> a(size_t(n) * n), b(size_t(n) * n), c(size_t(n) * n);
  core::FillUniform(absl::MakeSpan(a), 1, 0, 0);
  core::FillUniform(absl::MakeSpan(b), 1, 1, 0);
  double best = 1e30;
  for (int i = 0; i < 4; ++i) {  // the first run warms up
    auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    if (i > 0) best = std::min(best, Seconds(t0, Clock::now()));
  }
  return 2.0 * n * n * n / best / 1e9;
}

struct Result {
  std::string label;
  double gflops;
};

core::ModelMode g_mode = core::ModelMode::kTrain;

Result Run(const char* label, core::GPT2Config cfg, int B, int T, int steps) {
  core::ResetPeakMemory(core::Device::Cpu());
  const int64_t base = core::GetMemoryStats(core::Device::Cpu()).current;
  auto model = core::GPT2::Create(cfg).value();
  cfg = model->config();  // with the padded vocabulary filled in
  model->InitWeights(1);
  MT_CHECK_OK(model->Prepare({.B = B, .T = T, .mode = g_mode}));
  auto opt = optim::AdamW::Create(model.get(), {.lr = 1e-4f, .weight_decay = 0.1f}).value();
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[i] = static_cast<int32_t>(core::PhiloxUniform(2, 0, i) * cfg.vocab_size);
    tg[i] = static_cast<int32_t>(core::PhiloxUniform(2, 1, i) * cfg.vocab_size);
  }
  core::Batch batch{in.data(), tg.data(), B, T};
  core::Engine engine(model.get());
  std::vector<double> fwd, bwd, upd, total;
  for (int s = 0; s <= steps; ++s) {  // step 0 warms up
    auto t0 = Clock::now();
    MT_CHECK_OK(engine.Forward(batch));
    const float loss = engine.Loss();
    auto t1 = Clock::now();
    engine.ZeroGrad();
    MT_CHECK_OK(engine.Backward(batch));
    auto t2 = Clock::now();
    opt->Step();
    auto t3 = Clock::now();
    (void)loss;
    if (s == 0) continue;
    fwd.push_back(Seconds(t0, t1));
    bwd.push_back(Seconds(t1, t2));
    upd.push_back(Seconds(t2, t3));
    total.push_back(Seconds(t0, t3));
  }
  const double C = cfg.n_embd, L = cfg.n_layer, N = double(B) * T;
  const double flops = 3.0 * (2.0 * N * (L * 12 * C * C + double(cfg.padded_vocab_size) * C) +
                              2.0 * B * T * (T + 1.0) * C * L);
  const double t = Median(total);
  const double gflops = flops / t / 1e9;
  core::MemoryStats m = core::GetMemoryStats(core::Device::Cpu());
  auto mib = [&](core::MemoryTag tag) { return m.peak_by_tag[int(tag)] / 1048576.0; };
  std::printf("\n== %s: %s, %lld params, B=%d T=%d, %s, median of %d steps\n", label,
              cfg.ToString().c_str(), static_cast<long long>(model->num_parameters()), B, T,
              core::ModelModeName(g_mode), steps);
  std::printf("step %.1f ms (forward %.1f, backward %.1f, AdamW %.1f)  %.0f tokens/s\n", 1e3 * t,
              1e3 * Median(fwd), 1e3 * Median(bwd), 1e3 * Median(upd), N / t);
  std::printf("%.1f GFLOP/step, %.1f GFLOP/s\n", flops / 1e9, gflops);
  std::printf(
      "peak MiB: params %.1f, grads %.1f, optimizer %.1f, activations %.1f, "
      "backward scratch %.1f, total %.1f\n",
      mib(core::MemoryTag::kParams), mib(core::MemoryTag::kGrads), mib(core::MemoryTag::kOptimizer),
      mib(core::MemoryTag::kActivations), mib(core::MemoryTag::kScratch),
      (m.peak - base) / 1048576.0);
  return {label, gflops};
}

int main(int argc, char** argv) {
  std::string shape = "all";
  int steps = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--shape") == 0) shape = argv[i + 1];
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--recompute") == 0 && std::atoi(argv[i + 1]) != 0) {
      g_mode = core::ModelMode::kTrainRecompute;
    }
  }
  const int threads = core::InitThreads();
  // The machine may be shared and its speed drift: measure the sgemm peak before and after the
  // steps and compare against the higher of the two (the conservative ratio).
  const double peak_before = SgemmPeakGflops();
  std::printf("threads %d, cblas_sgemm 2048^3 peak before: %.1f GFLOP/s\n", threads, peak_before);
  std::vector<Result> results;
  if (shape == "all" || shape == "small") {
    results.push_back(Run(
        "small", {.max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd = 256},
        4, 128, steps ? steps : 10));
  }
  if (shape == "all" || shape == "124m") {
    results.push_back(
        Run("gpt2-124M",
            {.max_seq_len = 1024, .vocab_size = 50257, .n_layer = 12, .n_head = 12, .n_embd = 768},
            4, 64, steps ? steps : 5));
  }
  const double peak_after = SgemmPeakGflops();
  const double peak = std::max(peak_before, peak_after);
  std::printf("\ncblas_sgemm 2048^3 peak after: %.1f GFLOP/s; ratios use %.1f\n", peak_after, peak);
  for (const Result& r : results) {
    std::printf("%-10s %.1f GFLOP/s = %.1f%% of the sgemm peak\n", r.label.c_str(), r.gflops,
                100.0 * r.gflops / peak);
  }
  return 0;
}
