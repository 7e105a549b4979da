// Layer-wise offload against the same training with every block resident, in one run: each
// configuration trains in a child process of its own (so each has its own peak RSS), on the same
// model, batch and AdamW.
//   - the step time with offload next to the resident run's (median of the timed steps);
//   - the peak device bytes of a step (the allocator's peak after set-up) next to the formula
//     k * (layer params + layer gradients) + (embedding + head) * (params + gradients) +
//     activations and scratch;
//   - the process's peak RSS (VmHWM), and the tier's and the pinned pool's bytes;
//   - the losses of both runs, which must be bit-identical.
//
//   bench_offload [--shape 124m|small] [--B 1] [--T 64] [--steps 3] [--tier HOST|SSD]
//                 [--dir /tmp] [--k 2] [--kp 1] [--depth 1] [--on_device]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_shapes.h"
#include "bench/bench_util.h"
#include "core/allocator.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/threads.h"
#include "offload/pinned_pool.h"
#include "offload/streamer.h"
#include "optim/adamw.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
  std::string shape = "124m", tier = "HOST", dir = "/tmp";
  int B = 1, T = 64, steps = 3, k = 2, kp = 1, depth = 1;
  bool on_device = false;
};

struct Result {  // sent from a child through a pipe
  double step_ms = 0, first_step_ms = 0;
  int64_t peak_device = 0, setup_device = 0, formula = 0, window = 0, tier_bytes = 0,
          pool_bytes = 0, rss_kib = 0, activations = 0;
  double wait_ms = 0, read_mib = 0, written_mib = 0;
  float losses[16] = {};
  int ok = 0;
};

Result Run(const Args& a, bool offload) {
  Result r;
  const core::GPT2Config cfg = bench::BenchShape(a.shape);
  auto model = core::GPT2::Create(cfg).value();
  model->InitWeights(1);
  if (!model->Prepare({.B = a.B, .T = a.T, .mode = core::ModelMode::kTrain}).ok()) return r;
  const core::MemoryStats m0 = core::GetMemoryStats(core::Device::Cpu());
  r.activations = m0.current_by_tag[int(core::MemoryTag::kActivations)] +
                  m0.current_by_tag[int(core::MemoryTag::kScratch)];
  auto opt = optim::AdamW::Create(model.get(), {.lr = 1e-4f, .weight_decay = 0.1f}, {},
                                  offload && !a.on_device ? optim::StateAllocation::kLater
                                                          : optim::StateAllocation::kNow)
                 .value();
  core::Engine engine(model.get());
  std::unique_ptr<offload::LayerStreamer> streamer;
  if (offload) {
    offload::StreamerOptions so;
    so.tier = a.tier == "SSD" ? offload::Tier::kSsd : offload::Tier::kHost;
    so.ssd_path = a.dir;
    so.resident_blocks = a.k;
    so.swap_batch = a.kp;
    so.prefetch_depth = a.depth;
    so.optimizer_on_host = !a.on_device;
    auto s = offload::LayerStreamer::Create(model.get(), opt.get(), so);
    if (!s.ok()) {
      std::fprintf(stderr, "bench_offload: %s\n", std::string(s.status().message()).c_str());
      return r;
    }
    streamer = std::move(*s);
    engine.AddHooks(streamer.get());
    std::fprintf(stderr, "%s\n", streamer->Describe().c_str());
    r.window = streamer->window_bytes();
    r.tier_bytes = streamer->tier_bytes();
    r.pool_bytes = streamer->pool_bytes();
  } else {
    for (int s = 0; s < model->num_stages(); ++s) (void)model->block(s).EnsureGrads();
  }
  std::vector<int32_t> in(size_t(a.B) * a.T), tg(in.size());
  std::vector<double> times;
  const offload::StreamerStats zero;
  r.setup_device = core::GetMemoryStats(core::Device::Cpu()).current;
  core::ResetPeakMemory(core::Device::Cpu());
  for (int step = 0; step < a.steps; ++step) {
    for (size_t i = 0; i < in.size(); ++i) {
      in[i] = static_cast<int32_t>((i * 31 + step * 7) % cfg.vocab_size);
      tg[i] = static_cast<int32_t>((i * 17 + step * 3 + 1) % cfg.vocab_size);
    }
    const core::Batch batch{in.data(), tg.data(), a.B, a.T};
    const auto t0 = Clock::now();
    engine.ZeroGrad();
    if (!engine.Forward(batch).ok()) return r;
    const float loss = engine.Loss();
    if (!engine.Backward(batch).ok()) return r;
    const double norm = offload ? streamer->GradNorm() : optim::GlobalGradNorm(*model);
    opt->Step(optim::ClipScale(norm, 1.0f));
    if (offload && !streamer->status().ok()) return r;
    times.push_back(1e3 * std::chrono::duration<double>(Clock::now() - t0).count());
    if (step < 16) r.losses[step] = loss;
  }
  r.first_step_ms = times[0];
  std::vector<double> timed(times.begin() + (times.size() > 1 ? 1 : 0), times.end());
  std::sort(timed.begin(), timed.end());
  r.step_ms = timed[timed.size() / 2];
  r.peak_device = core::GetMemoryStats(core::Device::Cpu()).peak;
  const int64_t layer = model->block(1).numel() * 4;
  const int64_t resident = (model->block(0).numel() + model->block(cfg.n_layer + 1).numel()) * 4;
  r.formula = offload ? int64_t(a.k) * 2 * layer + 2 * resident + r.activations +
                            (a.on_device ? int64_t(8) * (cfg.n_layer * layer + resident) / 4 : 0)
                      : 0;
  if (offload) {
    const offload::StreamerStats st = streamer->stats();
    r.wait_ms = st.wait_ms / a.steps;
    r.read_mib = st.bytes_read / 1048576.0 / a.steps;
    r.written_mib = st.bytes_written / 1048576.0 / a.steps;
  }
  r.rss_kib = bench::PeakRssKib();
  r.ok = 1;
  return r;
}

double MiB(int64_t b) { return b / 1048576.0; }

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc || (i < argc && std::strcmp(argv[i], "--on_device") == 0); ++i) {
    const std::string f = argv[i];
    if (f == "--on_device") {
      a.on_device = true;
      continue;
    }
    const char* v = argv[++i];
    if (f == "--shape")
      a.shape = v;
    else if (f == "--B")
      a.B = std::atoi(v);
    else if (f == "--T")
      a.T = std::atoi(v);
    else if (f == "--steps")
      a.steps = std::max(1, std::min(16, std::atoi(v)));
    else if (f == "--tier")
      a.tier = v;
    else if (f == "--dir")
      a.dir = v;
    else if (f == "--k")
      a.k = std::atoi(v);
    else if (f == "--kp")
      a.kp = std::atoi(v);
    else if (f == "--depth")
      a.depth = std::atoi(v);
    else {
      std::fprintf(stderr, "bench_offload: unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  std::printf(
      "offload benchmark: shape %s, B=%d T=%d, AdamW, %d steps (median of steps 2..), "
      "%s tier, k=%d k'=%d prefetch=%d, optimizer on the %s, %d threads\n",
      a.shape.c_str(), a.B, a.T, a.steps, a.tier.c_str(), a.k, a.kp, a.depth,
      a.on_device ? "device" : "host", core::InitThreads());
  const Result base = bench::RunInChild<Result>([&] { return Run(a, false); });
  const Result off = bench::RunInChild<Result>([&] { return Run(a, true); });
  if (!base.ok || !off.ok) {
    std::fprintf(stderr, "bench_offload: a run failed\n");
    return 1;
  }
  bool same = true;
  for (int s = 0; s < std::min(a.steps, 16); ++s) same = same && base.losses[s] == off.losses[s];
  std::printf("%-34s %14s %14s\n", "", "resident", "offload");
  std::printf("%-34s %14.1f %14.1f   ratio %.3f\n", "step time, ms (median)", base.step_ms,
              off.step_ms, off.step_ms / base.step_ms);
  std::printf("%-34s %14.1f %14.1f\n", "first step, ms", base.first_step_ms, off.first_step_ms);
  std::printf("%-34s %14.1f %14.1f   ratio %.3f\n", "peak device MiB (a step)",
              MiB(base.peak_device), MiB(off.peak_device),
              double(off.peak_device) / base.peak_device);
  std::printf("%-34s %14s %14.1f   peak / formula %.3f\n", "formula: k blocks + emb/head + acts",
              "", MiB(off.formula), double(off.peak_device) / off.formula);
  std::printf("%-34s %14s %14.1f\n", "  of which the window (k slots)", "", MiB(off.window));
  std::printf("%-34s %14s %14.1f\n", "  of which activations + scratch", "", MiB(off.activations));
  std::printf("%-34s %14.1f %14.1f\n", "peak RSS MiB (VmHWM, whole run)", base.rss_kib / 1024.0,
              off.rss_kib / 1024.0);
  std::printf("%-34s %14s %14.1f\n", "tier MiB (host memory or file)", "", MiB(off.tier_bytes));
  std::printf("%-34s %14s %14.1f\n", "pinned pool MiB", "", MiB(off.pool_bytes));
  std::printf("%-34s %14s %14.1f / %.1f\n", "MiB read / written per step", "", off.read_mib,
              off.written_mib);
  std::printf("%-34s %14s %14.1f\n", "ms waiting for fetches per step", "", off.wait_ms);
  std::printf("losses bit-identical: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}
