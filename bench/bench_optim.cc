// Optimizer-step throughput against this machine's memory bandwidth, measured in one run:
//   bench_optim [--n ELEMENTS]        (default 64M parameters)
// Reference: the best of glibc memcpy, an OpenMP-parallel memcpy (256 MiB) and STREAM's triad,
// counting bytes read + written. Each optimizer: median of 5 steps over n parameters (state
// allocated and touched up front), counting the bytes its fused pass must read and write:
//   AdamW 28 B/param (read p g m v, write p m v), Lion fp32 20 (read p g m, write p m),
//   Lion bf16 16, SGD with momentum 20. With a pruning mask the call adds a pass that reads the
//   mask and reads + writes params and state: AdamW 28 + 25 = 53, Lion fp32 20 + 17 = 37.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/kernels/cpu/ops.h"
#include "core/philox.h"
#include "core/threads.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

double MedianSeconds(const std::function<void()>& fn, int reps) {
  fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  int64_t n = int64_t{64} << 20;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--n") == 0) n = std::atoll(argv[i + 1]);
  }
  const int threads = core::InitThreads();

  const size_t copy_bytes = size_t{256} << 20;
  std::vector<char> src(copy_bytes, 1), dst(copy_bytes, 0);
  const double t_memcpy =
      MedianSeconds([&] { std::memcpy(dst.data(), src.data(), copy_bytes); }, 5);
  const double t_par = MedianSeconds(
      [&] {
#pragma omp parallel
        {
          const size_t parts = omp_get_num_threads(), me = omp_get_thread_num();
          const size_t chunk = copy_bytes / parts, off = me * chunk;
          std::memcpy(dst.data() + off, src.data() + off,
                      me + 1 == parts ? copy_bytes - off : chunk);
        }
      },
      5);
  const double bw_memcpy = 2.0 * copy_bytes / t_memcpy / 1e9,
               bw_par = 2.0 * copy_bytes / t_par / 1e9;
  // STREAM's triad (a = b + s*c, 12 bytes per element) over 3 x 256 MiB, OpenMP.
  const int64_t tn = copy_bytes / 4;
  std::vector<float> ta(tn, 0.0f), tb(tn, 1.0f), tc(tn, 2.0f);
  const double t_triad = MedianSeconds(
      [&] {
        float* a = ta.data();
        const float *b = tb.data(), *c = tc.data();
#pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < tn; ++i) a[i] = b[i] + 3.0f * c[i];
      },
      5);
  const double bw_triad = 12.0 * tn / t_triad / 1e9;
  const double bw = std::max({bw_memcpy, bw_par, bw_triad});
  std::printf(
      "threads %d; memcpy 256 MiB: %.1f GB/s (glibc), %.1f GB/s (OpenMP); STREAM triad "
      "%.1f GB/s; reference = the best, %.1f GB/s (bytes read + written)\n",
      threads, bw_memcpy, bw_par, bw_triad, bw);

  std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
  std::vector<uint16_t> mb(n, 0);
  std::vector<uint8_t> mask;  // made by the first masked case (its warm-up call)
  core::FillNormal(absl::MakeSpan(p), 1, 0, 0, 0.0f, 0.02f);
  core::FillNormal(absl::MakeSpan(g), 1, 1, 0, 0.0f, 1e-3f);
  auto pruning_mask = [&]() -> const uint8_t* {
    if (mask.empty()) {  // and fresh state: SGD used v as its buffer
      mask.resize(n);
      for (int64_t i = 0; i < n; ++i) mask[i] = core::PhiloxUniform(1, 2, i) < 0.9f;  // 10% pruned
      std::fill(m.begin(), m.end(), 0.0f);
      std::fill(v.begin(), v.end(), 0.0f);
    }
    return mask.data();
  };
  int64_t step = 0;
  // The numbers of one step, as optim/ passes them (defaults of the optimizers' configs).
  auto adamw = [&step] {
    const float t = static_cast<float>(++step);
    return core::cpu::AdamWCoeffs{.lr = 1e-4f,
                                  .beta1 = 0.9f,
                                  .beta2 = 0.999f,
                                  .eps = 1e-8f,
                                  .weight_decay = 0.1f,
                                  .bias_correction1 = 1.0f - std::pow(0.9f, t),
                                  .bias_correction2 = 1.0f - std::pow(0.999f, t),
                                  .llmc_order = false};
  };
  const core::cpu::LionCoeffs lion{.lr = 1e-4f,
                                   .beta1 = 0.9f,
                                   .beta2 = 0.99f,
                                   .weight_decay = 0.1f,
                                   .tanh_direction = false,
                                   .tau = 1e-3f};
  core::cpu::LionCoeffs lion_tanh = lion;
  lion_tanh.weight_decay = 0.0f;
  lion_tanh.tanh_direction = true;
  auto sgd = [&step] {
    return core::cpu::SgdCoeffs{.lr = 1e-2f,
                                .momentum = 0.9f,
                                .dampening = 0.0f,
                                .weight_decay = 0.0f,
                                .nesterov = false,
                                .first_step = ++step == 1};
  };
  struct Case {
    const char* name;
    double bytes_per_param;
    std::function<void()> run;
  };
  const std::vector<Case> cases = {
      {"AdamW", 28,
       [&] { core::cpu::AdamWUpdate(p.data(), g.data(), m.data(), v.data(), n, adamw()); }},
      {"Lion (fp32 momentum)", 20,
       [&] { core::cpu::LionUpdate(p.data(), g.data(), m.data(), n, lion); }},
      {"Lion (bf16 momentum)", 16,
       [&] { core::cpu::LionUpdateBf16(p.data(), g.data(), mb.data(), n, lion); }},
      {"Lion-K tanh (fp32)", 20,
       [&] { core::cpu::LionUpdate(p.data(), g.data(), m.data(), n, lion_tanh); }},
      {"SGD momentum", 20, [&] { core::cpu::SgdUpdate(p.data(), g.data(), v.data(), n, sgd()); }},
      // With a pruning mask: the update, then the pass that zeroes the pruned entries.
      {"AdamW, masked", 53,
       [&] {
         core::cpu::AdamWUpdate(p.data(), g.data(), m.data(), v.data(), n, adamw(), 1.0f,
                                pruning_mask());
       }},
      {"Lion (fp32), masked", 37,
       [&] { core::cpu::LionUpdate(p.data(), g.data(), m.data(), n, lion, 1.0f, pruning_mask()); }},
  };
  std::printf("%lld parameters:\n", static_cast<long long>(n));
  for (const Case& c : cases) {
    const double t = MedianSeconds(c.run, 5);
    const double gbs = c.bytes_per_param * n / t / 1e9;
    std::printf("  %-22s %7.1f ms  %6.1f GB/s  = %5.1f%% of the reference\n", c.name, 1e3 * t, gbs,
                100.0 * gbs / bw);
  }
  return 0;
}
