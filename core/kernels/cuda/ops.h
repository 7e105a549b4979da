// CUDA kernels of the training core: the same ops, shapes and accumulate/write rules as
// core/kernels/cpu/ops.h (read that header for each buffer's shape), enqueued on a stream. Every
// pointer is device memory except where a comment says otherwise. Launchers return at once; the
// results are ready when the stream reaches them. Compiled only when nvcc is present
// (MEMTRAIN_CUDA); core/kernels/cuda/backend.cu puts them behind core::Backend.
#ifndef MEMTRAIN_CORE_KERNELS_CUDA_OPS_H_
#define MEMTRAIN_CORE_KERNELS_CUDA_OPS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/backend.h"

namespace memtrain::core::cuda {

// Aborts with the file, line and CUDA's message when a CUDA call fails.
void CheckCuda(cudaError_t err, const char* what, const char* file, int line);
#define MT_CUDA_CHECK(call) ::memtrain::core::cuda::CheckCuda((call), #call, __FILE__, __LINE__)
// After a launch: reports launch-configuration errors at once.
#define MT_CUDA_CHECK_LAUNCH() MT_CUDA_CHECK(cudaGetLastError())

// ---- LayerNorm (eps 1e-5), GELU (tanh), embedding, residual --------------------------------
void LayerNormForward(cudaStream_t s, float* out, float* mean, float* rstd, const float* inp,
                      const float* weight, const float* bias, int64_t N, int64_t C);
// dinp +=, dweight +=, dbias += (deterministic: no float atomics whose order varies run to run).
void LayerNormBackward(cudaStream_t s, float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t N, int64_t C);
void GeluForward(cudaStream_t s, float* out, const float* inp, int64_t n);
// dinp may alias dout.
void GeluBackward(cudaStream_t s, float* dinp, const float* inp, const float* dout, int64_t n);
// tokens (B, T) on the device.
void EmbeddingForward(cudaStream_t s, float* out, const int32_t* tokens, const float* wte,
                      const float* wpe, int64_t B, int64_t T, int64_t C, int64_t pos_offset);
// dwte +=, dwpe += (dwpe may be null); deterministic.
void EmbeddingBackward(cudaStream_t s, float* dwte, float* dwpe, const float* dout,
                       const int32_t* tokens, int64_t B, int64_t T, int64_t C, int64_t pos_offset);

// ---- fused softmax + cross-entropy; targets (N) on the device --------------------------------
void CrossEntropyForward(cudaStream_t s, float* losses, float* lse, const float* logits,
                         const int32_t* targets, int64_t N, int64_t V, int64_t Vp);
// dlogits may alias logits.
void CrossEntropyBackward(cudaStream_t s, float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float dloss, int64_t N, int64_t V, int64_t Vp);

// ---- matrix-product helpers (the products themselves are cuBLASLt calls in backend.cu) --------
// dbias (OC) += column sums of dout (N, OC); deterministic.
void BiasBackward(cudaStream_t s, float* dbias, const float* dout, int64_t N, int64_t OC);
// out (n, bf16 bits, round to nearest even) = in (n, fp32).
void F32ToBf16(cudaStream_t s, uint16_t* out, const float* in, int64_t n);

// ---- causal attention, tiled with an online softmax; never materialises T x T -------------
// fp32 on CUDA cores: the reference path, within 1e-5 of the CPU kernel.
void AttentionForward(cudaStream_t s, float* out, float* lse, const float* qkv, int64_t B,
                      int64_t T, int64_t C, int64_t NH);
void AttentionBackward(cudaStream_t s, float* dqkv, const float* dout, const float* qkv,
                       const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                       int64_t NH);
// bf16 tensor-core path (inputs rounded to bf16, fp32 accumulation and softmax; the same
// buffers, layouts and semantics as above). Returns false (and enqueues nothing) for a head size
// it does not support, so the caller falls back to the fp32 path.
bool AttentionForwardBf16(cudaStream_t s, float* out, float* lse, const float* qkv, int64_t B,
                          int64_t T, int64_t C, int64_t NH);
bool AttentionBackwardBf16(cudaStream_t s, float* dqkv, const float* dout, const float* qkv,
                           const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                           int64_t NH);

// ---- optimizers: the CPU kernels' formulas, operation for operation (results agree to rounding;
// the compilers contract multiply-adds differently) -------------------------------------------
void AdamWUpdate(cudaStream_t s, float* params, const float* grads, float* m, float* v, int64_t n,
                 const AdamWCoeffs& c, float grad_scale, const uint8_t* mask);
void LionUpdate(cudaStream_t s, float* params, const float* grads, float* m, int64_t n,
                const LionCoeffs& c, float grad_scale, const uint8_t* mask);
void LionUpdateBf16(cudaStream_t s, float* params, const float* grads, uint16_t* m, int64_t n,
                    const LionCoeffs& c, float grad_scale, const uint8_t* mask);
void SgdUpdate(cudaStream_t s, float* params, const float* grads, float* buf, int64_t n,
               const SgdCoeffs& c, float grad_scale, const uint8_t* mask);

// ---- reductions and elementwise helpers ------------------------------------------------------
// *result (one double on the device) = sum of x / sum of x^2, in double.
void Sum(cudaStream_t s, double* result, const float* x, int64_t n);
void SquaredNorm(cudaStream_t s, double* result, const float* x, int64_t n);
void Axpy(cudaStream_t s, float* y, float alpha, const float* x, int64_t n);
// y[i] = fmaf(a, z[i], x[i]), as the CPU backend's Fma.
void Fma(cudaStream_t s, float* y, float a, const float* z, const float* x, int64_t n);
void ApplyMask(cudaStream_t s, float* x, const uint8_t* mask, int64_t n);
// Bit-identical to core::FillNormal on the CPU (both use core/philox_math.h).
void FillNormal(cudaStream_t s, float* x, int64_t n, uint64_t seed, uint64_t stream,
                uint64_t offset, float mean, float std);
// y[i] = fmaf(scale, z, x[i]), bit-identical to core::AddNormal; y may be x.
void AddNormal(cudaStream_t s, float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream,
               uint64_t offset, float scale);

}  // namespace memtrain::core::cuda

#endif  // MEMTRAIN_CORE_KERNELS_CUDA_OPS_H_
