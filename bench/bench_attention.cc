// Causal attention kernel benchmark (CPU): forward and backward time and GFLOP/s for long
// sequences, and the peak memory the kernels themselves need (none beyond O(B*NH*T)).
//   bench_attention [--T 4096] [--B 1] [--NH 2] [--HS 64]
// FLOPs: forward 2 matrix products over the causal triangle = 2 * 2*B*NH*HS*T*(T+1)/2;
// backward counted as 2x forward (dq, dk, dv and the recomputed scores).
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
  int64_t T = 4096, B = 1, NH = 2, HS = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--T")) T = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--B")) B = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--NH")) NH = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--HS")) HS = std::atoll(argv[i + 1]);
  }
  const int threads = core::InitThreads();
  const int64_t C = NH * HS;
  std::vector<float> qkv(B * T * 3 * C), out(B * T * C), lse(B * NH * T), dout(B * T * C),
      dqkv(B * T * 3 * C);
  core::FillNormal(absl::MakeSpan(qkv), 1, 0, 0);
  core::FillNormal(absl::MakeSpan(dout), 1, 1, 0);
  auto time = [](auto fn) {
    std::vector<double> t;
    for (int r = 0; r < 4; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      fn();
      if (r > 0)
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  const double tf =
      time([&] { core::cpu::AttentionForward(out.data(), lse.data(), qkv.data(), B, T, C, NH); });
  const double tb = time([&] {
    core::cpu::AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                                 C, NH);
  });
  const double flops = 2.0 * 2.0 * B * NH * HS * T * (T + 1) / 2.0;
  std::printf(
      "B=%lld T=%lld NH=%lld HS=%lld, %d threads: forward %.1f ms (%.1f GFLOP/s), "
      "backward %.1f ms (%.1f GFLOP/s at 2x forward FLOPs)\n",
      (long long)B, (long long)T, (long long)NH, (long long)HS, threads, 1e3 * tf, flops / tf / 1e9,
      1e3 * tb, 2 * flops / tb / 1e9);
  return 0;
}
