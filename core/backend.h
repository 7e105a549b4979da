// Backend dispatch: every kernel the models and optimizers run is reached through the Backend of
// the device its tensors live on, and every call takes the ExecContext it runs in (a stream on
// CUDA; nothing on the CPU). The CPU backend is built in and wraps core/kernels/cpu; the CUDA
// backend registers itself with RegisterBackend when it is compiled in. Signatures are the CPU
// kernels' (raw pointers, shapes as in core/kernels/cpu/ops.h) so the two can be compared op by op.
//
//   core::Backend& be = core::BackendFor(tensor.device());
//   core::ExecContext ctx = core::ExecContext::For(tensor.device());
//   be.MatmulForward(ctx, out, nullptr, inp, w, b, N, C, OC);
//   be.SetZero(ctx, grads.raw(), grads.nbytes());
#ifndef MEMTRAIN_CORE_BACKEND_H_
#define MEMTRAIN_CORE_BACKEND_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/allocator.h"

namespace memtrain::core {

// Where an op runs. On the CPU ops are synchronous and `stream` is null; on CUDA `stream` is the
// cudaStream_t the op is enqueued on, and results are ready once that stream reaches it.
struct ExecContext {
  Device device;
  void* stream = nullptr;

  // The default context of a device (the CPU, or the CUDA backend's default stream).
  static ExecContext For(Device device) { return {device, nullptr}; }
};

// The numbers one optimizer step needs (hyperparameters and their validation live in optim/).
struct AdamWCoeffs {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  float bias_correction1;  // 1 - beta1^t for the 1-based step t
  float bias_correction2;  // 1 - beta2^t
  bool llmc_order;         // llm.c's rounding order instead of PyTorch's
};

struct LionCoeffs {
  float lr;
  float beta1;
  float beta2;
  float weight_decay;
  bool tanh_direction;  // dK = tanh(c / tau), a smooth sign, instead of sign(c)
  float tau;            // for tanh_direction
};

struct SgdCoeffs {
  float lr;
  float momentum;  // 0: plain SGD, buf unused
  float dampening;
  float weight_decay;
  bool nesterov;
  bool first_step;  // initialises the buffer
};

// The arithmetic of matrix products and attention. kF32: fp32 throughout (the reference). kBf16:
// operands rounded to bf16 as they enter the tensor cores, fp32 accumulation, fp32 results and
// fp32 master weights, gradients and optimizer state (as torch.autocast does for linear layers).
enum class ComputePrecision : uint8_t { kF32, kBf16 };
const char* ComputePrecisionName(ComputePrecision p);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceType type() const = 0;
  // Blocks the host until every op enqueued on ctx has finished (a no-op on the CPU).
  virtual void Synchronize(const ExecContext& ctx) = 0;

  // Applies to the ops enqueued after the call. InvalidArgument for a precision the backend
  // cannot compute in (the CPU backend computes in fp32 only).
  virtual absl::Status SetComputePrecision(ComputePrecision p);
  virtual ComputePrecision compute_precision() const { return ComputePrecision::kF32; }

  // ---- memory (all pointers on this backend's device) -------------------------------------
  virtual void SetZero(const ExecContext& ctx, void* dst, size_t bytes) = 0;
  virtual void Copy(const ExecContext& ctx, void* dst, const void* src, size_t bytes) = 0;
  // Host <-> device copies; `host` is host memory, `dev` this backend's.
  virtual void CopyToHost(const ExecContext& ctx, void* host, const void* dev, size_t bytes) = 0;
  virtual void CopyFromHost(const ExecContext& ctx, void* dev, const void* host, size_t bytes) = 0;

  // ---- the model's ops (see core/kernels/cpu/ops.h for shapes and accumulate/write rules) ----
  virtual void MatmulForward(const ExecContext& ctx, float* out, const float* residual,
                             const float* inp, const float* weight, const float* bias, int64_t N,
                             int64_t C, int64_t OC) = 0;
  virtual void MatmulBackward(const ExecContext& ctx, float* dinp, float* dweight, float* dbias,
                              const float* dout, const float* inp, const float* weight, int64_t N,
                              int64_t C, int64_t OC, bool accumulate_dinp = false) = 0;
  virtual void LayerNormForward(const ExecContext& ctx, float* out, float* mean, float* rstd,
                                const float* inp, const float* weight, const float* bias, int64_t N,
                                int64_t C) = 0;
  virtual void LayerNormBackward(const ExecContext& ctx, float* dinp, float* dweight, float* dbias,
                                 const float* dout, const float* inp, const float* weight,
                                 const float* mean, const float* rstd, int64_t N, int64_t C) = 0;
  virtual void GeluForward(const ExecContext& ctx, float* out, const float* inp, int64_t n) = 0;
  virtual void GeluBackward(const ExecContext& ctx, float* dinp, const float* inp,
                            const float* dout, int64_t n) = 0;
  virtual void AttentionForward(const ExecContext& ctx, float* out, float* lse, const float* qkv,
                                int64_t B, int64_t T, int64_t C, int64_t NH) = 0;
  virtual void AttentionBackward(const ExecContext& ctx, float* dqkv, const float* dout,
                                 const float* qkv, const float* out, const float* lse, int64_t B,
                                 int64_t T, int64_t C, int64_t NH) = 0;
  virtual void CrossEntropyForward(const ExecContext& ctx, float* losses, float* lse,
                                   const float* logits, const int32_t* targets, int64_t N,
                                   int64_t V, int64_t Vp) = 0;
  virtual void CrossEntropyBackward(const ExecContext& ctx, float* dlogits, const float* logits,
                                    const float* lse, const int32_t* targets, float dloss,
                                    int64_t N, int64_t V, int64_t Vp) = 0;
  virtual void EmbeddingForward(const ExecContext& ctx, float* out, const int32_t* tokens,
                                const float* wte, const float* wpe, int64_t B, int64_t T, int64_t C,
                                int64_t pos_offset) = 0;
  virtual void EmbeddingBackward(const ExecContext& ctx, float* dwte, float* dwpe,
                                 const float* dout, const int32_t* tokens, int64_t B, int64_t T,
                                 int64_t C, int64_t pos_offset) = 0;

  // ---- optimizers: one fused pass over (params, grads, state) of n elements; grad_scale
  // multiplies every gradient first; mask (n bytes) may be null, where it is 0 the parameter and
  // its state stay exactly 0 ----
  virtual void AdamWUpdate(const ExecContext& ctx, float* params, const float* grads, float* m,
                           float* v, int64_t n, const AdamWCoeffs& c, float grad_scale,
                           const uint8_t* mask) = 0;
  virtual void LionUpdate(const ExecContext& ctx, float* params, const float* grads, float* m,
                          int64_t n, const LionCoeffs& c, float grad_scale,
                          const uint8_t* mask) = 0;
  // m in bf16 (round to nearest even on every store).
  virtual void LionUpdateBf16(const ExecContext& ctx, float* params, const float* grads,
                              uint16_t* m, int64_t n, const LionCoeffs& c, float grad_scale,
                              const uint8_t* mask) = 0;
  virtual void SgdUpdate(const ExecContext& ctx, float* params, const float* grads, float* buf,
                         int64_t n, const SgdCoeffs& c, float grad_scale, const uint8_t* mask) = 0;

  // ---- reductions and elementwise helpers ----------------------------------------------------
  // Both return on the host (a synchronising read on a device): call them when the value is
  // needed, not on every step.
  virtual double Sum(const ExecContext& ctx, const float* x, int64_t n) = 0;
  virtual double SquaredNorm(const ExecContext& ctx, const float* x, int64_t n) = 0;
  // y += alpha * x.
  virtual void Axpy(const ExecContext& ctx, float* y, float alpha, const float* x, int64_t n) = 0;
  // y[i] = fmaf(a, z[i], x[i]): one rounding, the same bits on every backend (y may be x or z).
  virtual void Fma(const ExecContext& ctx, float* y, float a, const float* z, const float* x,
                   int64_t n) = 0;
  // x *= mask (u8, 1 = keep, 0 = zero).
  virtual void ApplyMask(const ExecContext& ctx, float* x, const uint8_t* mask, int64_t n) = 0;
  // x[i] = mean + std * N(0,1) from Philox(seed, stream) at element offset + i: the same numbers
  // on every backend, rank and thread count.
  virtual void FillNormal(const ExecContext& ctx, float* x, int64_t n, uint64_t seed,
                          uint64_t stream, uint64_t offset, float mean, float std) = 0;
  // y[i] = fmaf(scale, z, x[i]) with z those normals (y may be x): the zeroth-order perturbation
  // and update, with no buffer for the noise.
  virtual void AddNormal(const ExecContext& ctx, float* y, const float* x, int64_t n, uint64_t seed,
                         uint64_t stream, uint64_t offset, float scale) = 0;
};

// The backend of `device`'s type; aborts with a clear message if none is registered (e.g. a
// CUDA tensor in a build without CUDA).
Backend& BackendFor(Device device);
// Installs the backend of a device type (not owned; lives for the process).
void RegisterBackend(DeviceType type, Backend* backend);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_BACKEND_H_
