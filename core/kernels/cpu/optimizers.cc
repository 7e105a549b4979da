// Fused optimizer updates: one pass over a block's (params, grads, state), with the gradient
// scale of clipping folded in, and the fused squared-norm reduction clipping needs.
#include <cmath>

#include "core/dtype.h"
#include "core/kernels/cpu/fast_math.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::core::cpu {

namespace {

// The second pass of a masked update: x = 0 wherever mask == 0, for each array x (n elements).
// The update itself runs unchanged before it, so kept weights are bit for bit those of an update
// without a mask (a select fused into the update loops changes how gcc contracts multiply-adds,
// which moves kept weights by an ulp); the pass costs time only on masked blocks.
template <typename... T>
void ZeroPruned(const uint8_t* mask, int64_t n, T*... x) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = mask[i] != 0;
    ((x[i] = keep ? x[i] : T(0)), ...);
  }
}

}  // namespace

void AdamWUpdate(float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWCoeffs& c, float grad_scale, const uint8_t* mask) {
  const float b1 = c.beta1, b2 = c.beta2, lr = c.lr, eps = c.eps, wd = c.weight_decay;
  const float bc1 = c.bias_correction1, bc2 = c.bias_correction2;
  const bool pytorch = !c.llmc_order;
  // PyTorch: theta * (1 - lr*wd) - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps).
  // llm.c:   theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta). Same math, other rounding.
  const float step_size = lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1.0f - lr * wd;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    params[i] = pytorch
                    ? params[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps)
                    : params[i] - lr * (mi / bc1 / (std::sqrt(vi / bc2) + eps) + wd * params[i]);
  }
  if (mask != nullptr) ZeroPruned(mask, n, params, m, v);
}

namespace {

// The Lion-K direction: sign (K = L1 norm; sign(0) = 0) or tanh(c / tau) (K = tau * sum log cosh).
template <bool kTanh>
inline float Direction(float c, float inv_tau) {
  if constexpr (!kTanh) {
    return static_cast<float>((c > 0.0f) - (c < 0.0f));
  } else {
    return FastTanh(c * inv_tau);
  }
}

template <bool kTanh, typename MomentLoad, typename MomentStore>
void LionLoop(float* params, const float* grads, int64_t n, const LionCoeffs& h, float grad_scale,
              MomentLoad load, MomentStore store) {
  const float b1 = h.beta1, b2 = h.beta2, lr = h.lr, decay = 1.0f - h.lr * h.weight_decay;
  const float inv_tau = 1.0f / h.tau;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i] * grad_scale;
    const float m = load(i);
    const float c = b1 * m + (1.0f - b1) * g;  // the old momentum steers the update
    params[i] = params[i] * decay - lr * Direction<kTanh>(c, inv_tau);
    store(i, b2 * m + (1.0f - b2) * g);
  }
}

template <typename MomentLoad, typename MomentStore>
void LionDispatch(float* params, const float* grads, int64_t n, const LionCoeffs& h,
                  float grad_scale, MomentLoad load, MomentStore store) {
  if (!h.tanh_direction) {
    LionLoop<false>(params, grads, n, h, grad_scale, load, store);
  } else {
    LionLoop<true>(params, grads, n, h, grad_scale, load, store);
  }
}

}  // namespace

void LionUpdate(float* params, const float* grads, float* m, int64_t n, const LionCoeffs& h,
                float grad_scale, const uint8_t* mask) {
  LionDispatch(
      params, grads, n, h, grad_scale, [m](int64_t i) { return m[i]; },
      [m](int64_t i, float x) { m[i] = x; });
  if (mask != nullptr) ZeroPruned(mask, n, params, m);
}

void LionUpdateBf16(float* params, const float* grads, uint16_t* m, int64_t n, const LionCoeffs& h,
                    float grad_scale, const uint8_t* mask) {
  LionDispatch(
      params, grads, n, h, grad_scale, [m](int64_t i) { return Bf16ToFloat(m[i]); },
      [m](int64_t i, float x) { m[i] = FloatToBf16(x); });
  if (mask != nullptr) ZeroPruned(mask, n, params, m);  // bf16 0 is the bits 0
}

void SgdUpdate(float* params, const float* grads, float* buf, int64_t n, const SgdCoeffs& h,
               float grad_scale, const uint8_t* mask) {
  const float lr = h.lr, mu = h.momentum, damp = 1.0f - h.dampening, wd = h.weight_decay;
  const bool first = h.first_step;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float g = grads[i] * grad_scale + wd * params[i];  // L2 penalty, as torch.optim.SGD
    if (mu != 0.0f) {
      const float b = first ? g : mu * buf[i] + damp * g;
      buf[i] = b;
      g = h.nesterov ? g + mu * b : b;
    }
    params[i] -= lr * g;
  }
  if (mask == nullptr) return;
  if (mu != 0.0f) {
    ZeroPruned(mask, n, params, buf);
  } else {
    ZeroPruned(mask, n, params);
  }
}

double SquaredNorm(const float* x, int64_t n) {
  double total = 0.0;
  // Blocks of float partial sums keep it vectorised; the blocks add up in double.
  constexpr int64_t kBlock = 4096;
#pragma omp parallel for reduction(+ : total) schedule(static)
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = b + kBlock < n ? b + kBlock : n;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < e; ++i) s += x[i] * x[i];
    total += s;
  }
  return total;
}

}  // namespace memtrain::core::cpu
