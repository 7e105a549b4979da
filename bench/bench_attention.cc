// Causal attention kernel benchmark (CPU): forward and backward time and GFLOP/s for long
// sequences, and the same as a percentage of the sgemm peak measured in the same run.
//   bench_attention [--T 4096] [--B 1] [--NH 2] [--HS 64] [--reps 3]
// FLOPs: forward 2 matrix products over the causal triangle = 2 * 2*B*NH*HS*T*(T+1)/2;
// backward counted as 2x forward (dq, dk, dv and the recomputed scores).
// sgemm peak: cblas_sgemm 2048 x 2048 x 2048 on all threads, measured before and after the
// attention timings (the larger is used). Every figure is the best of --reps timed runs after
// one warm-up run: on a shared machine interference only ever slows a run down.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/kernels/cpu/ops.h"
#include "core/philox.h"
#include "core/threads.h"

using namespace memtrain;

int main(int argc, char** argv) {
  int64_t T = 4096, B = 1, NH = 2, HS = 64, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--T")) T = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--B")) B = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--NH")) NH = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--HS")) HS = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::max<int64_t>(1, std::atoll(argv[i + 1]));
  }
  const int threads = core::InitThreads();
  const int64_t C = NH * HS;
  std::vector<float> qkv(B * T * 3 * C), out(B * T * C), lse(B * NH * T), dout(B * T * C),
      dqkv(B * T * 3 * C);
  core::FillNormal(absl::MakeSpan(qkv), 1, 0, 0);
  core::FillNormal(absl::MakeSpan(dout), 1, 1, 0);
  // Seconds of the fastest of `reps` runs after a warm-up.
  auto time = [&](auto fn) {
    double best = 1e30;
    for (int64_t r = 0; r <= reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) best = std::min(best, t);
    }
    return best;
  };
  auto sgemm_peak = [&] {
    const int64_t n = 2048;
    std::vector<float> a(n * n), b(n * n), c(n * n);
    core::FillNormal(absl::MakeSpan(a), 1, 2, 0);
    core::FillNormal(absl::MakeSpan(b), 1, 3, 0);
    const double t = time([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                  n, 0.0f, c.data(), n);
    });
    return 2.0 * n * n * n / t / 1e9;
  };
  const double peak0 = sgemm_peak();
  const double tf =
      time([&] { core::cpu::AttentionForward(out.data(), lse.data(), qkv.data(), B, T, C, NH); });
  const double tb = time([&] {
    core::cpu::AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                                 C, NH);
  });
  const double peak = std::max(peak0, sgemm_peak());
  const double flops = 2.0 * 2.0 * B * NH * HS * T * (T + 1) / 2.0;
  const double gf = flops / tf / 1e9, gb = 2 * flops / tb / 1e9;
  std::printf(
      "B=%lld T=%lld NH=%lld HS=%lld, %d threads: forward %.1f ms (%.1f GFLOP/s, %.1f%% of "
      "sgemm peak), backward %.1f ms (%.1f GFLOP/s at 2x forward FLOPs, %.1f%%); sgemm peak "
      "%.1f GFLOP/s\n",
      (long long)B, (long long)T, (long long)NH, (long long)HS, threads, 1e3 * tf, gf,
      100 * gf / peak, 1e3 * tb, gb, 100 * gb / peak, peak);
  return 0;
}
