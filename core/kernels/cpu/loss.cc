// Fused softmax + cross-entropy.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/kernels/cpu/fast_math.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::core::cpu {

void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets,
                         int64_t N, int64_t V, int64_t Vp) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * Vp;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, x[j]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; ++j) sum += FastExp(x[j] - mx);
    const float z = mx + std::log(sum);
    lse[n] = z;
    losses[n] = targets[n] < 0 ? 0.0f : z - x[targets[n]];
  }
}

void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float dloss, int64_t N, int64_t V, int64_t Vp) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = logits + n * Vp;
    float* d = dlogits + n * Vp;
    const int32_t t = targets[n];
    if (t < 0) {
      std::fill_n(d, Vp, 0.0f);
      continue;
    }
    const float z = lse[n];
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) d[j] = dloss * FastExp(x[j] - z);
    d[t] -= dloss;
    for (int64_t j = V; j < Vp; ++j) d[j] = 0.0f;
  }
}

}  // namespace memtrain::core::cpu
