// The CPU backend: the kernels of core/kernels/cpu behind core::Backend. Ops are synchronous, the
// context carries nothing, and host copies are plain memcpy.
#include "core/backend.h"

#include <array>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/kernels/cpu/ops.h"
#include "core/philox.h"
#include "core/status.h"

namespace memtrain::core {
namespace {

class CpuBackend final : public Backend {
 public:
  DeviceType type() const override { return DeviceType::kCpu; }
  void Synchronize(const ExecContext&) override {}

  void SetZero(const ExecContext&, void* dst, size_t bytes) override {
    if (bytes > 0) std::memset(dst, 0, bytes);
  }
  void Copy(const ExecContext&, void* dst, const void* src, size_t bytes) override {
    if (bytes > 0 && dst != src) std::memcpy(dst, src, bytes);
  }
  void CopyToHost(const ExecContext& ctx, void* host, const void* dev, size_t bytes) override {
    Copy(ctx, host, dev, bytes);
  }
  void CopyFromHost(const ExecContext& ctx, void* dev, const void* host, size_t bytes) override {
    Copy(ctx, dev, host, bytes);
  }

  void MatmulForward(const ExecContext&, float* out, const float* residual, const float* inp,
                     const float* weight, const float* bias, int64_t N, int64_t C,
                     int64_t OC) override {
    cpu::MatmulForward(out, residual, inp, weight, bias, N, C, OC);
  }
  void MatmulBackward(const ExecContext&, float* dinp, float* dweight, float* dbias,
                      const float* dout, const float* inp, const float* weight, int64_t N,
                      int64_t C, int64_t OC, bool accumulate_dinp) override {
    cpu::MatmulBackward(dinp, dweight, dbias, dout, inp, weight, N, C, OC, accumulate_dinp);
  }
  void LayerNormForward(const ExecContext&, float* out, float* mean, float* rstd, const float* inp,
                        const float* weight, const float* bias, int64_t N, int64_t C) override {
    cpu::LayerNormForward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void LayerNormBackward(const ExecContext&, float* dinp, float* dweight, float* dbias,
                         const float* dout, const float* inp, const float* weight,
                         const float* mean, const float* rstd, int64_t N, int64_t C) override {
    cpu::LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void GeluForward(const ExecContext&, float* out, const float* inp, int64_t n) override {
    cpu::GeluForward(out, inp, n);
  }
  void GeluBackward(const ExecContext&, float* dinp, const float* inp, const float* dout,
                    int64_t n) override {
    cpu::GeluBackward(dinp, inp, dout, n);
  }
  void AttentionForward(const ExecContext&, float* out, float* lse, const float* qkv, int64_t B,
                        int64_t T, int64_t C, int64_t NH) override {
    cpu::AttentionForward(out, lse, qkv, B, T, C, NH);
  }
  void AttentionBackward(const ExecContext&, float* dqkv, const float* dout, const float* qkv,
                         const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                         int64_t NH) override {
    cpu::AttentionBackward(dqkv, dout, qkv, out, lse, B, T, C, NH);
  }
  void CrossEntropyForward(const ExecContext&, float* losses, float* lse, const float* logits,
                           const int32_t* targets, int64_t N, int64_t V, int64_t Vp) override {
    cpu::CrossEntropyForward(losses, lse, logits, targets, N, V, Vp);
  }
  void CrossEntropyBackward(const ExecContext&, float* dlogits, const float* logits,
                            const float* lse, const int32_t* targets, float dloss, int64_t N,
                            int64_t V, int64_t Vp) override {
    cpu::CrossEntropyBackward(dlogits, logits, lse, targets, dloss, N, V, Vp);
  }
  void EmbeddingForward(const ExecContext&, float* out, const int32_t* tokens, const float* wte,
                        const float* wpe, int64_t B, int64_t T, int64_t C,
                        int64_t pos_offset) override {
    cpu::EmbeddingForward(out, tokens, wte, wpe, B, T, C, pos_offset);
  }
  void EmbeddingBackward(const ExecContext&, float* dwte, float* dwpe, const float* dout,
                         const int32_t* tokens, int64_t B, int64_t T, int64_t C,
                         int64_t pos_offset) override {
    cpu::EmbeddingBackward(dwte, dwpe, dout, tokens, B, T, C, pos_offset);
  }

  void AdamWUpdate(const ExecContext&, float* params, const float* grads, float* m, float* v,
                   int64_t n, const AdamWCoeffs& c, float grad_scale,
                   const uint8_t* mask) override {
    cpu::AdamWUpdate(params, grads, m, v, n, c, grad_scale, mask);
  }
  void LionUpdate(const ExecContext&, float* params, const float* grads, float* m, int64_t n,
                  const LionCoeffs& c, float grad_scale, const uint8_t* mask) override {
    cpu::LionUpdate(params, grads, m, n, c, grad_scale, mask);
  }
  void LionUpdateBf16(const ExecContext&, float* params, const float* grads, uint16_t* m, int64_t n,
                      const LionCoeffs& c, float grad_scale, const uint8_t* mask) override {
    cpu::LionUpdateBf16(params, grads, m, n, c, grad_scale, mask);
  }
  void SgdUpdate(const ExecContext&, float* params, const float* grads, float* buf, int64_t n,
                 const SgdCoeffs& c, float grad_scale, const uint8_t* mask) override {
    cpu::SgdUpdate(params, grads, buf, n, c, grad_scale, mask);
  }

  double Sum(const ExecContext&, const float* x, int64_t n) override {
    double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (int64_t i = 0; i < n; ++i) s += x[i];
    return s;
  }
  double SquaredNorm(const ExecContext&, const float* x, int64_t n) override {
    return cpu::SquaredNorm(x, n);
  }
  void Axpy(const ExecContext&, float* y, float alpha, const float* x, int64_t n) override {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
  }
  void Fma(const ExecContext&, float* y, float a, const float* z, const float* x,
           int64_t n) override {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = std::fmaf(a, z[i], x[i]);
  }
  void ApplyMask(const ExecContext&, float* x, const uint8_t* mask, int64_t n) override {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] = mask[i] ? x[i] : 0.0f;
  }
  void FillNormal(const ExecContext&, float* x, int64_t n, uint64_t seed, uint64_t stream,
                  uint64_t offset, float mean, float std) override {
    core::FillNormal(absl::MakeSpan(x, n), seed, stream, offset, mean, std);
  }
  void AddNormal(const ExecContext&, float* y, const float* x, int64_t n, uint64_t seed,
                 uint64_t stream, uint64_t offset, float scale) override {
    core::AddNormal(y, x, n, seed, stream, offset, scale);
  }
};

CpuBackend cpu_backend;
std::array<Backend*, 2> backends = {&cpu_backend, nullptr};

}  // namespace

const char* ComputePrecisionName(ComputePrecision p) {
  return p == ComputePrecision::kBf16 ? "bf16" : "fp32";
}

absl::Status Backend::SetComputePrecision(ComputePrecision p) {
  if (p == ComputePrecision::kF32) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "compute precision %s is not available on the %s backend, which computes in fp32; run on "
      "a CUDA device for bf16",
      ComputePrecisionName(p), type() == DeviceType::kCpu ? "CPU" : "CUDA"));
}

Backend& BackendFor(Device device) {
  Backend* b = backends[static_cast<int>(device.type)];
  MT_CHECK(b != nullptr) << "no backend for " << device.ToString()
                         << ": this build of memtrain was made without it";
  return *b;
}

void RegisterBackend(DeviceType type, Backend* backend) {
  backends[static_cast<int>(type)] = backend;
}

}  // namespace memtrain::core
