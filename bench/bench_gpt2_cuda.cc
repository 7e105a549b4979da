// GPT-2 training on one GPU: tokens/s and MFU at llm.c's GPU settings (GPT-2 124M, T=1024,
// B=4..16), fp32 and bf16 compute. Measures in the same run the bf16 and fp32 cuBLASLt peaks
// through the backend's own product (8192^3), so the MFU is quoted both against the datasheet
// (989 TFLOP/s dense bf16 for H100/H200 SXM) and against what this GPU reached.
//
//   bench_gpt2_cuda [--batches 4,8,16] [--steps 10] [--precision both|bf16|fp32] [--T 1024]
//                   [--profile 1]   (then also GPU ms per op per step; step times include the
//                                    events' small cost, so quote them from a run without it)
//
// FLOPs per token as llm.c counts them: 6*N + 6*L*C*T (N = parameters, counted with the tied
// embedding once).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "core/allocator.h"
#include "core/backend.h"
#include "core/cuda.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "optim/adamw.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kDatasheetBf16 = 989.4e12;  // H100/H200 SXM dense bf16
const core::Device kGpu = core::Device::Cuda(0);
bool g_profile = false;  // --profile 1: per-op GPU time of the measured steps (slows them a little)

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// C (n x n) = A B^T through the backend's MatmulForward: the products the model runs.
double ProductPeak(core::ComputePrecision p) {
  core::Backend& be = core::BackendFor(kGpu);
  const core::ExecContext ctx = core::ExecContext::For(kGpu);
  MT_CHECK_OK(be.SetComputePrecision(p));
  const int64_t n = 8192;
  auto a = core::Tensor::Empty({n, n}, core::DType::kF32, core::MemoryTag::kOther, kGpu).value();
  auto b = core::Tensor::Empty({n, n}, core::DType::kF32, core::MemoryTag::kOther, kGpu).value();
  auto c = core::Tensor::Empty({n, n}, core::DType::kF32, core::MemoryTag::kOther, kGpu).value();
  be.FillNormal(ctx, a.f32(), n * n, 1, 0, 0, 0.0f, 1.0f);
  be.FillNormal(ctx, b.f32(), n * n, 1, 1, 0, 0.0f, 1.0f);
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {  // the first warms up (and plans the product)
    be.Synchronize(ctx);
    auto t0 = Clock::now();
    be.MatmulForward(ctx, c.f32(), nullptr, a.f32(), b.f32(), nullptr, n, n, n);
    be.Synchronize(ctx);
    if (i > 0) best = std::min(best, Seconds(t0, Clock::now()));
  }
  MT_CHECK_OK(be.SetComputePrecision(core::ComputePrecision::kF32));
  return 2.0 * n * n * n / best;
}

struct Row {
  std::string precision;
  int B;
  double ms, tokens_per_s, flops_per_s;
  double peak_gib;
};

Row Run(core::ComputePrecision p, int B, int T, int steps) {
  core::ResetPeakMemory(kGpu);
  core::GPT2Config cfg{
      .max_seq_len = 1024, .vocab_size = 50257, .n_layer = 12, .n_head = 12, .n_embd = 768};
  auto model = core::GPT2::Create(cfg, kGpu).value();
  cfg = model->config();
  model->InitWeights(1);
  MT_CHECK_OK(model->Prepare({.B = B, .T = T, .mode = core::ModelMode::kTrain}));
  auto opt = optim::AdamW::Create(model.get(), {.lr = 1e-4f, .weight_decay = 0.1f}).value();
  core::Backend& be = core::BackendFor(kGpu);
  MT_CHECK_OK(be.SetComputePrecision(p));
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[i] = static_cast<int32_t>(core::PhiloxUniform(2, 0, i) * cfg.vocab_size);
    tg[i] = static_cast<int32_t>(core::PhiloxUniform(2, 1, i) * cfg.vocab_size);
  }
  core::Batch batch{in.data(), tg.data(), B, T};
  core::Engine engine(model.get());
  const core::ExecContext ctx = engine.context();
  double first_loss = 0, last_loss = 0;
  Clock::time_point start;
  for (int s = 0; s < steps + 2; ++s) {  // two steps warm up (plans, allocation of gradients)
    if (s == 2) {
      be.Synchronize(ctx);
      start = Clock::now();
      core::CudaProfile(g_profile);
    }
    MT_CHECK_OK(engine.Forward(batch));
    engine.ZeroGrad();
    MT_CHECK_OK(engine.Backward(batch));
    opt->Step();
    if (s == 0) first_loss = model->Loss(0);
  }
  be.Synchronize(ctx);
  const double t = Seconds(start, Clock::now()) / steps;
  core::CudaProfile(false);
  const std::string profile = g_profile ? core::CudaProfileReport(steps) : "";
  last_loss = model->Loss(0);
  MT_CHECK_OK(be.SetComputePrecision(core::ComputePrecision::kF32));
  const double N = static_cast<double>(model->num_parameters());
  const double flops_per_token = 6.0 * N + 6.0 * cfg.n_layer * cfg.n_embd * double(T);
  const double tokens = double(B) * T;
  std::printf(
      "  %-4s B=%-2d T=%d  step %7.1f ms  %9.0f tokens/s  %6.1f TFLOP/s  loss %.3f -> %.3f"
      "  peak %.1f GiB\n",
      core::ComputePrecisionName(p), B, T, 1e3 * t, tokens / t, flops_per_token * tokens / t / 1e12,
      first_loss, last_loss, core::GetMemoryStats(kGpu).peak / 1073741824.0);
  if (!profile.empty()) std::printf("%s", profile.c_str());
  std::fflush(stdout);
  return {core::ComputePrecisionName(p),
          B,
          1e3 * t,
          tokens / t,
          flops_per_token * tokens / t,
          core::GetMemoryStats(kGpu).peak / 1073741824.0};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> batches = {4, 8, 16};
  int steps = 10, T = 1024;
  std::string precision = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--batches") {
      batches.clear();
      for (absl::string_view b : absl::StrSplit(value, ',')) {
        int x = 0;
        if (absl::SimpleAtoi(b, &x) && x > 0) batches.push_back(x);
      }
    } else if (flag == "--steps") {
      steps = std::max(1, std::atoi(value.c_str()));
    } else if (flag == "--T") {
      T = std::atoi(value.c_str());
    } else if (flag == "--precision") {
      precision = value;
    } else if (flag == "--profile") {
      g_profile = value == "1";
    } else {
      std::fprintf(stderr, "unknown flag %s; flags: --batches --steps --T --precision\n",
                   flag.c_str());
      return 2;
    }
  }
  if (core::CudaDeviceCount() == 0) {
    std::printf("bench_gpt2_cuda: skipped: %s\n", core::CudaUnavailableReason().c_str());
    return 0;
  }
  MT_CHECK_OK(core::InitCuda(0));
  std::printf("GPU: %s\n", core::CudaDeviceDescription(0).c_str());
  const double peak_bf16 = ProductPeak(core::ComputePrecision::kBf16);
  const double peak_f32 = ProductPeak(core::ComputePrecision::kF32);
  std::printf(
      "backend product 8192^3: bf16 %.1f TFLOP/s (%.1f%% of the 989.4 datasheet), fp32 "
      "%.1f TFLOP/s\n",
      peak_bf16 / 1e12, 100 * peak_bf16 / kDatasheetBf16, peak_f32 / 1e12);
  std::vector<Row> rows;
  for (const char* p : {"bf16", "fp32"}) {
    if (precision != "both" && precision != p) continue;
    const auto cp =
        std::strcmp(p, "bf16") == 0 ? core::ComputePrecision::kBf16 : core::ComputePrecision::kF32;
    for (int B : batches) rows.push_back(Run(cp, B, T, steps));
  }
  std::printf("\nprecision  B   tokens/s   MFU(datasheet bf16)  MFU(measured %s peak)\n", "same");
  for (const Row& r : rows) {
    const double own = r.precision == "bf16" ? peak_bf16 : peak_f32;
    std::printf("%-9s %3d %10.0f   %6.1f%%              %6.1f%%\n", r.precision.c_str(), r.B,
                r.tokens_per_s, 100 * r.flops_per_s / kDatasheetBf16, 100 * r.flops_per_s / own);
  }
  return 0;
}
