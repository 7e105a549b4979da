// Fused softmax + cross-entropy, and the fused AdamW update.
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

void AdamWUpdate(float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWHyper& h) {
  const float b1 = h.beta1, b2 = h.beta2, lr = h.lr, eps = h.eps, wd = h.weight_decay;
  const float bc1 = 1.0f - std::pow(b1, static_cast<float>(h.step));
  const float bc2 = 1.0f - std::pow(b2, static_cast<float>(h.step));
  const bool pytorch = h.variant == AdamWVariant::kPyTorch;
  // PyTorch: theta * (1 - lr*wd) - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).
  // llm.c:   theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta). Same math, other rounding.
  const float step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1.0f - lr * wd;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i];
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = pytorch
                    ? params[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps)
                    : params[i] - lr * (mi / bc1 / (std::sqrt(vi / bc2) + eps) + wd * params[i]);
  }
}

}  // namespace memtrain::core::cpu
