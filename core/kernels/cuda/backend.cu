// The CUDA backend: core/kernels/cuda behind core::Backend, matrix products through cuBLASLt,
// device memory through cudaMalloc, and the entry points of core/cuda.h. One GPU per process (one
// MPI rank per GPU); every op is enqueued on the ExecContext's stream (null: the default stream).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/cuda.h"
#include "core/kernels/cuda/ops.h"
#include "core/status.h"

namespace memtrain::core {
namespace cuda {
namespace {

void CheckCublas(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "%s:%d: cuBLAS call failed: %s: %s (status %d)\n", file, line, what,
               cublasLtGetStatusString(st), static_cast<int>(st));
  std::abort();
}
#define MT_CUBLAS_CHECK(call) CheckCublas((call), #call, __FILE__, __LINE__)

cudaStream_t StreamOf(const ExecContext& ctx) { return static_cast<cudaStream_t>(ctx.stream); }

// out (rows, cols) += bias (cols) broadcast over rows: the bias of a product whose epilogue
// could not carry it.
__global__ void AddBiasKernel(float* out, const float* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += bias[i % cols];
  }
}

void AddBias(cudaStream_t s, float* out, const float* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65536));
  AddBiasKernel<<<blocks, threads, 0, s>>>(out, bias, rows, cols);
  MT_CUDA_CHECK_LAUNCH();
}

// The largest power of two (<= 256) dividing the address: cuBLASLt picks kernels by the
// alignment it is promised, and a block's views sit at any 4-byte offset.
int AlignmentOf(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 4 && (a % align) != 0) align /= 2;
  return align;
}

class CudaAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes == 0 ? 256 : bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error so later calls are not blamed
      return nullptr;
    }
    return p;
  }
  void Free(void* ptr, size_t) override {
    if (ptr != nullptr) MT_CUDA_CHECK(cudaFree(ptr));
  }
};

// Per-op GPU time (MEMTRAIN_CUDA_PROFILE=1 or CudaProfile(true)): each op is bracketed by two
// events on its stream; Report() synchronises and sums the elapsed times by op name.
class Profiler {
 public:
  struct Record {
    const char* name;
    cudaEvent_t start, end;
  };
  void set_on(bool on) { on_ = on; }

  class Scope {
   public:
    Scope(Profiler* p, const char* name, cudaStream_t s) : p_(p->on_ ? p : nullptr), s_(s) {
      if (p_ == nullptr) return;
      rec_.name = name;
      rec_.start = p_->Event();
      MT_CUDA_CHECK(cudaEventRecord(rec_.start, s_));
    }
    ~Scope() {
      if (p_ == nullptr) return;
      rec_.end = p_->Event();
      MT_CUDA_CHECK(cudaEventRecord(rec_.end, s_));
      p_->records_.push_back(rec_);
    }

   private:
    Profiler* p_;
    cudaStream_t s_;
    Record rec_{};
  };

  std::string Report(int steps) {
    MT_CUDA_CHECK(cudaDeviceSynchronize());
    std::map<std::string, std::pair<double, int64_t>> by_name;  // ms, calls
    double total = 0;
    for (const Record& r : records_) {
      float ms = 0;
      MT_CUDA_CHECK(cudaEventElapsedTime(&ms, r.start, r.end));
      by_name[r.name].first += ms;
      by_name[r.name].second += 1;
      total += ms;
      free_.push_back(r.start);
      free_.push_back(r.end);
    }
    records_.clear();
    std::vector<std::pair<double, std::string>> order;
    for (const auto& [name, v] : by_name) order.push_back({v.first, name});
    std::sort(order.rbegin(), order.rend());
    const double div = steps > 0 ? steps : 1;
    std::string out = absl::StrFormat("%-22s %10s %7s %8s\n", "op", "ms/step", "share", "calls");
    for (const auto& [ms, name] : order) {
      out += absl::StrFormat("%-22s %10.3f %6.1f%% %8.0f\n", name, ms / div, 100 * ms / total,
                             by_name[name].second / div);
    }
    out += absl::StrFormat("%-22s %10.3f\n", "sum of ops", total / div);
    return out;
  }

 private:
  cudaEvent_t Event() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e;
    MT_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  bool on_ = false;
  std::vector<Record> records_;
  std::vector<cudaEvent_t> free_;
};
#define MT_PROFILE(name, stream) Profiler::Scope profile_scope_(&profiler_, name, stream)

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device_index) : device_(Device::Cuda(device_index)) {
    MT_CUBLAS_CHECK(cublasLtCreate(&lt_));
    MT_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
    MT_CUDA_CHECK(cudaMalloc(&result_, sizeof(double)));
  }

  DeviceType type() const override { return DeviceType::kCuda; }
  void Synchronize(const ExecContext& ctx) override {
    MT_CUDA_CHECK(cudaStreamSynchronize(StreamOf(ctx)));
  }
  absl::Status SetComputePrecision(ComputePrecision p) override {
    precision_ = p;
    return absl::OkStatus();
  }
  ComputePrecision compute_precision() const override { return precision_; }
  Profiler& profiler() { return profiler_; }

  // ---- memory ----
  void SetZero(const ExecContext& ctx, void* dst, size_t bytes) override {
    MT_PROFILE("memset", StreamOf(ctx));
    if (bytes > 0) MT_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, StreamOf(ctx)));
  }
  void Copy(const ExecContext& ctx, void* dst, const void* src, size_t bytes) override {
    MT_PROFILE("copy", StreamOf(ctx));
    if (bytes > 0 && dst != src) {
      MT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, StreamOf(ctx)));
    }
  }
  // Both host copies return with the copy done: the host buffer may be reused at once.
  void CopyToHost(const ExecContext& ctx, void* host, const void* dev, size_t bytes) override {
    if (bytes == 0) return;
    MT_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, StreamOf(ctx)));
    MT_CUDA_CHECK(cudaStreamSynchronize(StreamOf(ctx)));
  }
  void CopyFromHost(const ExecContext& ctx, void* dev, const void* host, size_t bytes) override {
    if (bytes == 0) return;
    MT_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, StreamOf(ctx)));
    MT_CUDA_CHECK(cudaStreamSynchronize(StreamOf(ctx)));
  }

  // ---- matrix products ----
  // Row-major out (N, OC) = inp (N, C) @ weight (OC, C)^T is, column-major, out^T (OC x N) =
  // op_T(weight^T stored C x OC) * inp^T (C x N).
  void MatmulForward(const ExecContext& ctx, float* out, const float* residual, const float* inp,
                     const float* weight, const float* bias, int64_t N, int64_t C,
                     int64_t OC) override {
    cudaStream_t s = StreamOf(ctx);
    const bool bf16 = precision_ == ComputePrecision::kBf16;
    const void* a = weight;
    const void* b = inp;
    if (bf16) {
      MT_PROFILE("cast_bf16", s);
      uint16_t* wb = Scratch16(0, OC * C);
      uint16_t* ib = Scratch16(1, N * C);
      F32ToBf16(s, wb, weight, OC * C);
      F32ToBf16(s, ib, inp, N * C);
      a = wb;
      b = ib;
    }
    if (residual != nullptr && residual != out) Copy(ctx, out, residual, N * OC * sizeof(float));
    MT_PROFILE(OC > 8 * C ? "matmul_fwd_head" : "matmul_fwd", s);
    const float beta = residual != nullptr ? 1.0f : 0.0f;
    if (!Gemm(s, /*transa=*/true, /*transb=*/false, OC, N, C, a, C, b, C, out, OC, beta, bias,
              bf16)) {
      // No bf16 kernel for these strides or alignments: this product runs in fp32.
      MT_CHECK(bf16) << "cuBLASLt has no fp32 kernel for a " << OC << "x" << N << "x" << C
                     << " product";
      Gemm(s, true, false, OC, N, C, weight, C, inp, C, out, OC, beta, bias, false);
    }
  }

  void MatmulBackward(const ExecContext& ctx, float* dinp, float* dweight, float* dbias,
                      const float* dout, const float* inp, const float* weight, int64_t N,
                      int64_t C, int64_t OC, bool accumulate_dinp) override {
    cudaStream_t s = StreamOf(ctx);
    const bool bf16 = precision_ == ComputePrecision::kBf16;
    const void* d = dout;
    const void* w = weight;
    const void* x = inp;
    if (bf16) {
      MT_PROFILE("cast_bf16", s);
      uint16_t* db = Scratch16(0, N * OC);
      F32ToBf16(s, db, dout, N * OC);
      d = db;
      if (dinp != nullptr) {
        uint16_t* wb = Scratch16(1, OC * C);
        F32ToBf16(s, wb, weight, OC * C);
        w = wb;
      }
      uint16_t* xb = Scratch16(2, N * C);
      F32ToBf16(s, xb, inp, N * C);
      x = xb;
    }
    std::optional<Profiler::Scope> mm;
    mm.emplace(&profiler_, OC > 8 * C ? "matmul_bwd_head" : "matmul_bwd", s);
    // dinp^T (C x N) = weight^T (C x OC, stored so) * dout^T (OC x N).
    if (dinp != nullptr) {
      const float beta = accumulate_dinp ? 1.0f : 0.0f;
      if (!Gemm(s, false, false, C, N, OC, w, C, d, OC, dinp, C, beta, nullptr, bf16)) {
        MT_CHECK(bf16) << "cuBLASLt has no fp32 kernel for a " << C << "x" << N << "x" << OC
                       << " product";
        Gemm(s, false, false, C, N, OC, weight, C, dout, OC, dinp, C, beta, nullptr, false);
      }
    }
    // dweight^T (C x OC) += inp^T (C x N) * op_T(dout^T stored OC x N).
    if (!Gemm(s, false, true, C, OC, N, x, C, d, OC, dweight, C, 1.0f, nullptr, bf16)) {
      MT_CHECK(bf16) << "cuBLASLt has no fp32 kernel for a " << C << "x" << OC << "x" << N
                     << " product";
      Gemm(s, false, true, C, OC, N, inp, C, dout, OC, dweight, C, 1.0f, nullptr, false);
    }
    mm.reset();
    if (dbias != nullptr) {
      MT_PROFILE("bias_bwd", s);
      BiasBackward(s, dbias, dout, N, OC);
    }
  }

  // ---- the model's other ops ----
  void LayerNormForward(const ExecContext& ctx, float* out, float* mean, float* rstd,
                        const float* inp, const float* weight, const float* bias, int64_t N,
                        int64_t C) override {
    MT_PROFILE("layernorm_fwd", StreamOf(ctx));
    cuda::LayerNormForward(StreamOf(ctx), out, mean, rstd, inp, weight, bias, N, C);
  }
  void LayerNormBackward(const ExecContext& ctx, float* dinp, float* dweight, float* dbias,
                         const float* dout, const float* inp, const float* weight,
                         const float* mean, const float* rstd, int64_t N, int64_t C) override {
    MT_PROFILE("layernorm_bwd", StreamOf(ctx));
    cuda::LayerNormBackward(StreamOf(ctx), dinp, dweight, dbias, dout, inp, weight, mean, rstd, N,
                            C);
  }
  void GeluForward(const ExecContext& ctx, float* out, const float* inp, int64_t n) override {
    MT_PROFILE("gelu_fwd", StreamOf(ctx));
    cuda::GeluForward(StreamOf(ctx), out, inp, n);
  }
  void GeluBackward(const ExecContext& ctx, float* dinp, const float* inp, const float* dout,
                    int64_t n) override {
    MT_PROFILE("gelu_bwd", StreamOf(ctx));
    cuda::GeluBackward(StreamOf(ctx), dinp, inp, dout, n);
  }
  void AttentionForward(const ExecContext& ctx, float* out, float* lse, const float* qkv, int64_t B,
                        int64_t T, int64_t C, int64_t NH) override {
    MT_PROFILE("attention_fwd", StreamOf(ctx));
    cudaStream_t s = StreamOf(ctx);
    if (precision_ == ComputePrecision::kBf16 &&
        cuda::AttentionForwardBf16(s, out, lse, qkv, B, T, C, NH)) {
      return;
    }
    cuda::AttentionForward(s, out, lse, qkv, B, T, C, NH);
  }
  void AttentionBackward(const ExecContext& ctx, float* dqkv, const float* dout, const float* qkv,
                         const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                         int64_t NH) override {
    MT_PROFILE("attention_bwd", StreamOf(ctx));
    cudaStream_t s = StreamOf(ctx);
    if (precision_ == ComputePrecision::kBf16 &&
        cuda::AttentionBackwardBf16(s, dqkv, dout, qkv, out, lse, B, T, C, NH)) {
      return;
    }
    cuda::AttentionBackward(s, dqkv, dout, qkv, out, lse, B, T, C, NH);
  }
  void CrossEntropyForward(const ExecContext& ctx, float* losses, float* lse, const float* logits,
                           const int32_t* targets, int64_t N, int64_t V, int64_t Vp) override {
    MT_PROFILE("crossentropy_fwd", StreamOf(ctx));
    cuda::CrossEntropyForward(StreamOf(ctx), losses, lse, logits, targets, N, V, Vp);
  }
  void CrossEntropyBackward(const ExecContext& ctx, float* dlogits, const float* logits,
                            const float* lse, const int32_t* targets, float dloss, int64_t N,
                            int64_t V, int64_t Vp) override {
    MT_PROFILE("crossentropy_bwd", StreamOf(ctx));
    cuda::CrossEntropyBackward(StreamOf(ctx), dlogits, logits, lse, targets, dloss, N, V, Vp);
  }
  void EmbeddingForward(const ExecContext& ctx, float* out, const int32_t* tokens, const float* wte,
                        const float* wpe, int64_t B, int64_t T, int64_t C,
                        int64_t pos_offset) override {
    MT_PROFILE("embedding_fwd", StreamOf(ctx));
    cuda::EmbeddingForward(StreamOf(ctx), out, tokens, wte, wpe, B, T, C, pos_offset);
  }
  void EmbeddingBackward(const ExecContext& ctx, float* dwte, float* dwpe, const float* dout,
                         const int32_t* tokens, int64_t B, int64_t T, int64_t C,
                         int64_t pos_offset) override {
    MT_PROFILE("embedding_bwd", StreamOf(ctx));
    cuda::EmbeddingBackward(StreamOf(ctx), dwte, dwpe, dout, tokens, B, T, C, pos_offset);
  }

  // ---- optimizers ----
  void AdamWUpdate(const ExecContext& ctx, float* params, const float* grads, float* m, float* v,
                   int64_t n, const AdamWCoeffs& c, float grad_scale,
                   const uint8_t* mask) override {
    MT_PROFILE("adamw", StreamOf(ctx));
    cuda::AdamWUpdate(StreamOf(ctx), params, grads, m, v, n, c, grad_scale, mask);
  }
  void LionUpdate(const ExecContext& ctx, float* params, const float* grads, float* m, int64_t n,
                  const LionCoeffs& c, float grad_scale, const uint8_t* mask) override {
    MT_PROFILE("lion", StreamOf(ctx));
    cuda::LionUpdate(StreamOf(ctx), params, grads, m, n, c, grad_scale, mask);
  }
  void LionUpdateBf16(const ExecContext& ctx, float* params, const float* grads, uint16_t* m,
                      int64_t n, const LionCoeffs& c, float grad_scale,
                      const uint8_t* mask) override {
    MT_PROFILE("lion", StreamOf(ctx));
    cuda::LionUpdateBf16(StreamOf(ctx), params, grads, m, n, c, grad_scale, mask);
  }
  void SgdUpdate(const ExecContext& ctx, float* params, const float* grads, float* buf, int64_t n,
                 const SgdCoeffs& c, float grad_scale, const uint8_t* mask) override {
    MT_PROFILE("sgd", StreamOf(ctx));
    cuda::SgdUpdate(StreamOf(ctx), params, grads, buf, n, c, grad_scale, mask);
  }

  // ---- reductions and helpers ----
  double Sum(const ExecContext& ctx, const float* x, int64_t n) override {
    if (n == 0) return 0.0;
    cuda::Sum(StreamOf(ctx), result_, x, n);
    return ReadResult(ctx);
  }
  double SquaredNorm(const ExecContext& ctx, const float* x, int64_t n) override {
    MT_PROFILE("squared_norm", StreamOf(ctx));
    if (n == 0) return 0.0;
    cuda::SquaredNorm(StreamOf(ctx), result_, x, n);
    return ReadResult(ctx);
  }
  void Fma(const ExecContext& ctx, float* y, float a, const float* z, const float* x,
           int64_t n) override {
    if (n > 0) cuda::Fma(StreamOf(ctx), y, a, z, x, n);
  }
  void Axpy(const ExecContext& ctx, float* y, float alpha, const float* x, int64_t n) override {
    MT_PROFILE("axpy", StreamOf(ctx));
    if (n > 0) cuda::Axpy(StreamOf(ctx), y, alpha, x, n);
  }
  void ApplyMask(const ExecContext& ctx, float* x, const uint8_t* mask, int64_t n) override {
    if (n > 0) cuda::ApplyMask(StreamOf(ctx), x, mask, n);
  }
  void FillNormal(const ExecContext& ctx, float* x, int64_t n, uint64_t seed, uint64_t stream,
                  uint64_t offset, float mean, float std) override {
    if (n > 0) cuda::FillNormal(StreamOf(ctx), x, n, seed, stream, offset, mean, std);
  }
  void AddNormal(const ExecContext& ctx, float* y, const float* x, int64_t n, uint64_t seed,
                 uint64_t stream, uint64_t offset, float scale) override {
    if (n > 0) cuda::AddNormal(StreamOf(ctx), y, x, n, seed, stream, offset, scale);
  }

 private:
  static constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's split-K and Hopper kernels
  static constexpr int kScratchSlots = 3;

  double ReadResult(const ExecContext& ctx) {
    double h = 0.0;
    CopyToHost(ctx, &h, result_, sizeof(double));
    return h;
  }

  // Slot `slot` of the bf16 operand scratch, at least n elements. Ops on one stream run in order,
  // so a slot is reused only after the product that read it; growing frees the old buffer, which
  // cudaFree does only after the device is idle.
  uint16_t* Scratch16(int slot, int64_t n) {
    const size_t bytes = static_cast<size_t>(n) * sizeof(uint16_t);
    Slot& sl = scratch_[slot];
    if (sl.bytes < bytes) {
      if (sl.ptr != nullptr) Free(device_, sl.ptr, sl.bytes, MemoryTag::kScratch);
      absl::StatusOr<void*> p = Allocate(device_, bytes, MemoryTag::kScratch);
      MT_CHECK(p.ok()) << "bf16 operand scratch of " << bytes << " bytes: " << p.status();
      sl.ptr = *p;
      sl.bytes = bytes;
    }
    return static_cast<uint16_t*>(sl.ptr);
  }

  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo;
    bool bias_in_epilogue = false;
  };
  // (m, n, k, lda, ldb, ldd, transa, transb, bf16, bias usable by the epilogue (given and 16-byte
  // aligned), beta != 0, alignments of a, b, c).
  using PlanKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, bool,
                             bool, bool, int, int, int>;

  // Column-major D (m x n) = alpha * op(A) op(B) + beta * D, with A stored (transa ? k x m : m x
  // k) and B (transb ? n x k : k x n); fp32 or bf16 operands, fp32 accumulation and D. bias (m)
  // is added to every column when given. False (nothing enqueued) when cuBLASLt has no kernel.
  bool Gemm(cudaStream_t s, bool transa, bool transb, int64_t m, int64_t n, int64_t k,
            const void* A, int64_t lda, const void* B, int64_t ldb, float* D, int64_t ldd,
            float beta, const float* bias, bool bf16) {
    if (m == 0 || n == 0) return true;
    const bool want_bias = bias != nullptr;
    // The epilogue reads the bias with vector loads: only a 16-byte aligned bias goes there.
    const bool epilogue_bias = want_bias && AlignmentOf(bias) >= 16;
    PlanKey key{m,
                n,
                k,
                lda,
                ldb,
                ldd,
                transa,
                transb,
                bf16,
                epilogue_bias,
                beta != 0.0f,
                AlignmentOf(A),
                AlignmentOf(B),
                AlignmentOf(D)};
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, MakePlan(key)).first;
    if (!it->second.has_value()) return false;
    Plan& p = *it->second;
    if (p.bias_in_epilogue) {
      MT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                     sizeof(bias)));
    }
    const float alpha = 1.0f;
    MT_CUBLAS_CHECK(cublasLtMatmul(lt_, p.op, &alpha, A, p.a, B, p.b, &beta, D, p.c, D, p.c,
                                   &p.algo, workspace_, kWorkspaceBytes, s));
    if (want_bias && !p.bias_in_epilogue) AddBias(s, D, bias, n, m);
    return true;
  }

  std::optional<Plan> MakePlan(const PlanKey& key) {
    const auto [m, n, k, lda, ldb, ldd, transa, transb, bf16, epilogue_bias, beta_nonzero, align_a,
                align_b, align_c] = key;
    const cudaDataType_t in_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    // With an aligned bias, try the fused epilogue first; fall back to a separate add when no
    // kernel accepts it.
    for (int attempt = epilogue_bias ? 0 : 1; attempt < 2; ++attempt) {
      const bool epilogue = attempt == 0;
      Plan q;
      MT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&q.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N;
      const cublasOperation_t tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
      MT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(q.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      MT_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(q.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      if (epilogue) {
        const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        const cudaDataType_t bias_type = CUDA_R_32F;
        MT_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(q.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof(ep)));
        MT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(q.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                       &bias_type, sizeof(bias_type)));
      }
      MT_CUBLAS_CHECK(
          cublasLtMatrixLayoutCreate(&q.a, in_type, transa ? k : m, transa ? m : k, lda));
      MT_CUBLAS_CHECK(
          cublasLtMatrixLayoutCreate(&q.b, in_type, transb ? n : k, transb ? k : n, ldb));
      MT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&q.c, CUDA_R_32F, m, n, ldd));
      cublasLtMatmulPreference_t pref;
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      const size_t ws = kWorkspaceBytes;
      const uint32_t aa = align_a, ab = align_b, ac = align_c;
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(lt_, q.op, q.a, q.b, q.c, q.c, pref, 1, &result, &found);
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
      if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
        q.algo = result.algo;
        q.bias_in_epilogue = epilogue;
        return q;
      }
      cublasLtMatrixLayoutDestroy(q.a);
      cublasLtMatrixLayoutDestroy(q.b);
      cublasLtMatrixLayoutDestroy(q.c);
      cublasLtMatmulDescDestroy(q.op);
    }
    return std::nullopt;
  }

  struct Slot {
    void* ptr = nullptr;
    size_t bytes = 0;
  };

  Device device_;
  Profiler profiler_;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  double* result_ = nullptr;  // one double on the device: Sum and SquaredNorm land here
  ComputePrecision precision_ = ComputePrecision::kF32;
  Slot scratch_[kScratchSlots];
  std::map<PlanKey, std::optional<Plan>> plans_;  // nullopt: cuBLASLt has no kernel
};

struct State {
  std::mutex mu;
  int device_index = -1;
  CudaAllocator allocator;
  CudaBackend* backend = nullptr;  // lives for the process
};

State& GetState() {
  static State* s = new State;
  return *s;
}

}  // namespace

void CheckCuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  std::fprintf(stderr, "%s:%d: CUDA call failed: %s: %s (%s)\n", file, line, what,
               cudaGetErrorString(err), cudaGetErrorName(err));
  std::abort();
}

}  // namespace cuda

bool CudaCompiledIn() { return true; }

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string CudaUnavailableReason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return absl::StrFormat("no usable GPU: the CUDA runtime says %s (%s)", cudaGetErrorString(err),
                           cudaGetErrorName(err));
  }
  return n == 0 ? "no GPU is visible to this process" : "";
}

absl::Status InitCuda(int device_index) {
  cuda::State& s = cuda::GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.backend != nullptr) {
    if (s.device_index == device_index) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrFormat(
        "InitCuda(%d): this process already uses cuda:%d; memtrain runs one GPU per process (one "
        "MPI rank per GPU)",
        device_index, s.device_index));
  }
  const int n = CudaDeviceCount();
  if (n == 0) return absl::FailedPreconditionError(CudaUnavailableReason());
  if (device_index < 0 || device_index >= n) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "InitCuda(%d): this machine has %d GPU(s), numbered 0..%d", device_index, n, n - 1));
  }
  MT_CUDA_CHECK(cudaSetDevice(device_index));
  // The kernels' stream-ordered scratch (cudaMallocAsync) stays in the pool between steps
  // instead of going back to the driver at every synchronisation.
  cudaMemPool_t pool;
  MT_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_index));
  uint64_t keep = UINT64_MAX;
  MT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  s.backend = new cuda::CudaBackend(device_index);
  if (const char* v = std::getenv("MEMTRAIN_CUDA_PROFILE"); v != nullptr && v[0] == '1') {
    s.backend->profiler().set_on(true);
  }
  s.device_index = device_index;
  RegisterAllocator(DeviceType::kCuda, &s.allocator);
  RegisterBackend(DeviceType::kCuda, s.backend);
  return absl::OkStatus();
}

void CudaProfile(bool on) {
  cuda::State& s = cuda::GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.backend != nullptr) s.backend->profiler().set_on(on);
}

std::string CudaProfileReport(int steps) {
  cuda::State& s = cuda::GetState();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.backend != nullptr ? s.backend->profiler().Report(steps) : "";
}

std::string CudaDeviceDescription(int device_index) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device_index) != cudaSuccess) {
    (void)cudaGetLastError();
    return "no GPU " + std::to_string(device_index);
  }
  return absl::StrFormat("%s, %.1f GiB, sm_%d%d, %d SMs", p.name, p.totalGlobalMem / 1073741824.0,
                         p.major, p.minor, p.multiProcessorCount);
}

}  // namespace memtrain::core
