// CUDA optimizer updates of core/kernels/cuda/ops.h: one fused pass over (params, grads, state)
// per call, with the formulas of core/kernels/cpu/optimizers.cc written operation for operation
// (AdamW in both rounding orders, Lion and Lion-K with fp32 or bf16 momentum, SGD as
// torch.optim.SGD). The derived scalars (1 - lr*wd, lr/bc1, sqrt(bc2), 1/tau) are computed once on
// the host as the CPU kernels do.
//
// Masks: where mask[i] == 0 the parameter and its state are stored as exactly 0; elsewhere the
// select only picks the value the unmasked update computes, so kept weights equal those of a call
// without a mask.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/kernels/cuda/kernel_util.cuh"
#include "core/kernels/cuda/ops.h"

namespace memtrain::core::cuda {

namespace {

__device__ __forceinline__ bool Keep(const uint8_t* mask, int64_t i) {
  return mask == nullptr || mask[i] != 0;
}

__global__ void AdamWKernel(float* params, const float* grads, float* m, float* v, int64_t n,
                            AdamWCoeffs c, float step_size, float bc2_sqrt, float decay,
                            float grad_scale, const uint8_t* mask) {
  const float b1 = c.beta1, b2 = c.beta2, lr = c.lr, eps = c.eps, wd = c.weight_decay;
  const float bc1 = c.bias_correction1, bc2 = c.bias_correction2;
  const bool pytorch = !c.llmc_order;
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const float g = grads[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    const float p = params[i];
    const float updated = pytorch ? p * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps)
                                  : p - lr * (mi / bc1 / (sqrtf(vi / bc2) + eps) + wd * p);
    const bool keep = Keep(mask, i);
    m[i] = keep ? mi : 0.0f;
    v[i] = keep ? vi : 0.0f;
    params[i] = keep ? updated : 0.0f;
  }
}

// The momentum in fp32, or in bf16 rounded to nearest even on every store.
__device__ __forceinline__ float LoadMoment(const float* m, int64_t i) { return m[i]; }
__device__ __forceinline__ float LoadMoment(const uint16_t* m, int64_t i) {
  return Bf16BitsToFloat(m[i]);
}
__device__ __forceinline__ void StoreMoment(float* m, int64_t i, float x) { m[i] = x; }
__device__ __forceinline__ void StoreMoment(uint16_t* m, int64_t i, float x) {
  m[i] = FloatToBf16Bits(x);  // 0.0f is the bits 0, so a pruned entry stores 0 either way
}

// The Lion-K direction: sign (sign(0) = 0), or tanh(c / tau). The CPU kernel's tanh is its
// vectorisable FastTanh (core/kernels/cpu/fast_math.h); here it is CUDA's tanhf: the two agree to
// a few ulp of the direction, scaled by lr in the update.
template <typename Moment>
__global__ void LionKernel(float* params, const float* grads, Moment* m, int64_t n, LionCoeffs h,
                           float decay, float inv_tau, float grad_scale, const uint8_t* mask) {
  const float b1 = h.beta1, b2 = h.beta2, lr = h.lr;
  const bool use_tanh = h.tanh_direction;
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const float g = grads[i] * grad_scale;
    const float mo = LoadMoment(m, i);
    const float c = b1 * mo + (1.0f - b1) * g;  // the old momentum steers the update
    const float dir = use_tanh ? tanhf(c * inv_tau) : static_cast<float>((c > 0.0f) - (c < 0.0f));
    const float updated = params[i] * decay - lr * dir;
    const float m_new = b2 * mo + (1.0f - b2) * g;
    const bool keep = Keep(mask, i);
    params[i] = keep ? updated : 0.0f;
    StoreMoment(m, i, keep ? m_new : 0.0f);
  }
}

// torch.optim.SGD: g += wd*theta; buf = g on the first step, else momentum*buf + (1-dampening)*g;
// g = nesterov ? g + momentum*buf : buf; theta -= lr*g. buf is untouched (may be null) when
// momentum == 0.
__global__ void SgdKernel(float* params, const float* grads, float* buf, int64_t n, SgdCoeffs h,
                          float grad_scale, const uint8_t* mask) {
  const float lr = h.lr, mu = h.momentum, damp = 1.0f - h.dampening, wd = h.weight_decay;
  const bool first = h.first_step, nesterov = h.nesterov;
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const bool keep = Keep(mask, i);
    float g = grads[i] * grad_scale + wd * params[i];
    if (mu != 0.0f) {
      const float b = first ? g : mu * buf[i] + damp * g;
      buf[i] = keep ? b : 0.0f;
      g = nesterov ? g + mu * b : b;
    }
    const float updated = params[i] - lr * g;
    params[i] = keep ? updated : 0.0f;
  }
}

template <typename Moment>
void LaunchLion(cudaStream_t s, float* params, const float* grads, Moment* m, int64_t n,
                const LionCoeffs& c, float grad_scale, const uint8_t* mask) {
  if (n == 0) return;
  const float decay = 1.0f - c.lr * c.weight_decay;
  const float inv_tau = 1.0f / c.tau;
  LionKernel<Moment>
      <<<GridFor(n), kThreads, 0, s>>>(params, grads, m, n, c, decay, inv_tau, grad_scale, mask);
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void AdamWUpdate(cudaStream_t s, float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWCoeffs& c, float grad_scale, const uint8_t* mask) {
  if (n == 0) return;
  const float step_size = c.lr / c.bias_correction1;
  const float bc2_sqrt = std::sqrt(c.bias_correction2);
  const float decay = 1.0f - c.lr * c.weight_decay;
  AdamWKernel<<<GridFor(n), kThreads, 0, s>>>(params, grads, m, v, n, c, step_size, bc2_sqrt, decay,
                                              grad_scale, mask);
  MT_CUDA_CHECK_LAUNCH();
}

void LionUpdate(cudaStream_t s, float* params, const float* grads, float* m, int64_t n,
                const LionCoeffs& c, float grad_scale, const uint8_t* mask) {
  LaunchLion(s, params, grads, m, n, c, grad_scale, mask);
}

void LionUpdateBf16(cudaStream_t s, float* params, const float* grads, uint16_t* m, int64_t n,
                    const LionCoeffs& c, float grad_scale, const uint8_t* mask) {
  LaunchLion(s, params, grads, m, n, c, grad_scale, mask);
}

void SgdUpdate(cudaStream_t s, float* params, const float* grads, float* buf, int64_t n,
               const SgdCoeffs& c, float grad_scale, const uint8_t* mask) {
  if (n == 0) return;
  SgdKernel<<<GridFor(n), kThreads, 0, s>>>(params, grads, buf, n, c, grad_scale, mask);
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace memtrain::core::cuda
