// CPU kernels of the training core, forward and backward side by side (one pair per op, as in
// llm.c). Matrix products go to OpenBLAS sgemm; everything else is OpenMP over plain loops. The
// CUDA backend implements the same signatures in core/kernels/cuda/.
//
// Conventions: row-major; N = B*T rows; shapes are given in the comment of each buffer. Backward
// kernels ACCUMULATE (+=) into parameter gradients; for activation gradients each function says
// whether it writes or accumulates.
#ifndef MEMTRAIN_CORE_KERNELS_CPU_OPS_H_
#define MEMTRAIN_CORE_KERNELS_CPU_OPS_H_

#include <cstdint>

#include "core/backend.h"

namespace memtrain::core::cpu {

// ---- matrix product (linear layer) ----------------------------------------------------------
// out = residual + inp @ weight^T + bias.
//   out (N, OC); residual (N, OC) or null; inp (N, C); weight (OC, C); bias (OC) or null.
//   `out` may alias `residual`.
void MatmulForward(float* out, const float* residual, const float* inp, const float* weight,
                   const float* bias, int64_t N, int64_t C, int64_t OC);
// dinp (N, C) = dout @ weight (written, or added when accumulate_dinp); dinp may be null.
// dweight (OC, C) += dout^T @ inp;  dbias (OC) += column sums of dout (null: no bias).
void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t N, int64_t C, int64_t OC,
                    bool accumulate_dinp = false);
// The same two, with the same bits on any thread count: OpenBLAS's sgemm rounds differently
// with the number of threads and with how a product is cut, so these cut it into fixed tiles
// that depend on the shapes only (rows of out and dinp, columns of dweight) and run each tile
// single-threaded, the tiles in parallel. For small layers whose result must not depend on the
// rank's share of the cores (the CNN's head: federated rounds equal on 1 and N ranks).
void MatmulForwardFixed(float* out, const float* inp, const float* weight, const float* bias,
                        int64_t N, int64_t C, int64_t OC);
void MatmulBackwardFixed(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC);

// ---- LayerNorm (eps 1e-5) ---------------------------------------------------------------------
// out (N, C); mean, rstd (N) saved for backward; inp (N, C); weight, bias (C).
void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t N, int64_t C);
// dinp (N, C) +=; dweight, dbias (C) +=.
void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t N, int64_t C);

// ---- GELU, tanh approximation -------------------------------------------------------------------
void GeluForward(float* out, const float* inp, int64_t n);
// dinp = dout * gelu'(inp), written; dinp may alias dout.
void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n);

// ---- causal multi-head attention, tiled with an online softmax ---------------------------------
// qkv (B, T, 3C): row t holds [q | k | v], head h at columns h*HS .. (h+1)*HS of each part.
// out (B, T, C) in the same head layout; lse (B, NH, T) = log-sum-exp of each query's scaled
// scores, saved for backward. Never materialises a T x T matrix: memory is O(T * HS) per head.
void AttentionForward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                      int64_t NH);
// dqkv (B, T, 3C) written. Recomputes the probabilities from qkv and lse.
void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH);

// ---- fused softmax + cross-entropy ------------------------------------------------------------
// logits (N, Vp) of which the first V columns are real (the rest is padding); targets (N), a
// negative target marks a position without loss. losses (N) = -log softmax(logits)[target] (0 where
// ignored); lse (N) saved for backward.
void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets,
                         int64_t N, int64_t V, int64_t Vp);
// dlogits (N, Vp) = dloss * (softmax(logits) - onehot(target)), padding columns and ignored rows
// zero. Written; dlogits may alias logits (saving a full (N, Vp) buffer).
void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float dloss, int64_t N, int64_t V, int64_t Vp);

// ---- token + position embedding ---------------------------------------------------------------
// out (B, T, C) = wte[tokens[b, t]] + wpe[pos_offset + t]; tokens (B, T); wte (V, C); wpe (maxT,
// C). pos_offset lets a sequence shard use its global positions.
void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t B, int64_t T, int64_t C, int64_t pos_offset = 0);
// dwte (V, C) +=, dwpe (maxT, C) += (dwpe may be null).
void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t B, int64_t T, int64_t C, int64_t pos_offset = 0);

// ---- residual --------------------------------------------------------------------------------
// out = a + b (out may alias either). Its backward is an accumulation: AddInPlace(da, dout).
void ResidualForward(float* out, const float* a, const float* b, int64_t n);
void AddInPlace(float* y, const float* x, int64_t n);

// ---- optimizers: one fused pass over (params, grads, state) of n elements --------------------
// The kernels take the numbers of one step (hyperparameters and their validation live in optim/).
// grad_scale multiplies every gradient first (global-norm clipping folded into the update).
// mask (n bytes) may be null; where it is 0, the parameter and its state are left exactly 0
// (pruned weights stay 0, their state does not grow); elsewhere the result is bit for bit that of
// the call without a mask. A masked call adds one pass that zeroes the pruned entries; calls
// without a mask run the plain loop.

// AdamW: m = beta1*m + (1-beta1)*g; v = beta2*v + (1-beta2)*g^2;
//   PyTorch's order: theta *= 1 - lr*wd, then theta -= lr * m_hat / (sqrt(v_hat) + eps);
//   llm.c's order:   theta -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta).
using core::AdamWCoeffs;
using core::LionCoeffs;
using core::SgdCoeffs;

void AdamWUpdate(float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWCoeffs& c, float grad_scale = 1.0f, const uint8_t* mask = nullptr);

// Lion (Chen et al. 2023) and Lion-K: theta *= 1 - lr*wd; c = beta1*m + (1-beta1)*g;
// theta -= lr * dK(c); m = beta2*m + (1-beta2)*g. dK = sign (sign(0) = 0), or tanh(c / tau).
// m (n) in fp32, or in bf16 (round to nearest even on every store) for half the state memory.
void LionUpdate(float* params, const float* grads, float* m, int64_t n, const LionCoeffs& c,
                float grad_scale = 1.0f, const uint8_t* mask = nullptr);
void LionUpdateBf16(float* params, const float* grads, uint16_t* m, int64_t n, const LionCoeffs& c,
                    float grad_scale = 1.0f, const uint8_t* mask = nullptr);

// SGD with torch.optim.SGD's semantics: g += wd*theta; buf = g on the first step, else
// momentum*buf + (1-dampening)*g; g = nesterov ? g + momentum*buf : buf; theta -= lr*g.
// buf (n) may be null when momentum == 0.
void SgdUpdate(float* params, const float* grads, float* buf, int64_t n, const SgdCoeffs& c,
               float grad_scale = 1.0f, const uint8_t* mask = nullptr);

// sum of x^2 (n), accumulated in double across blocks: one read, no temporaries.
double SquaredNorm(const float* x, int64_t n);

}  // namespace memtrain::core::cpu

#endif  // MEMTRAIN_CORE_KERNELS_CPU_OPS_H_
