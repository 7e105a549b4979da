// CUDA kernels of core/kernels/cuda/ops.h other than attention, matmul and the optimizers:
// LayerNorm, GELU, embeddings, the fused softmax cross-entropy, bias gradients, fp32 -> bf16, and
// the reductions. The formulas are the CPU kernels' (core/kernels/cpu/*.cc), written the same way.
//
// Determinism: every sum runs in an order fixed by the shapes alone (no float atomics, no order
// that depends on scheduling), so a run repeats bit for bit. Sums over rows go through per-chunk
// partials in a stream-ordered scratch buffer and are then added up chunk by chunk.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cub/device/device_radix_sort.cuh>

#include "core/kernels/cuda/kernel_util.cuh"
#include "core/kernels/cuda/ops.h"

namespace memtrain::core::cuda {

// CheckCuda is defined once, in core/kernels/cuda/backend.cu.

namespace {

// ---- column sums (dweight, dbias) -----------------------------------------------------------
// Blocks of kColTile columns x kColRowThreads row threads; block (x, y) sums rows
// [y * chunk_rows, (y + 1) * chunk_rows) of its columns into partials[y][col]; then one thread
// per column adds the chunks in order.
constexpr int kColTile = 32;  // one column per lane: each row's slice is one coalesced read
constexpr int kColRowThreads = 8;
constexpr int64_t kMinChunkRows = 128;

// Rows per chunk: at least kMinChunkRows, and few enough chunks for gridDim.y (<= 65535).
int64_t ChunkRows(int64_t N) { return std::max<int64_t>(kMinChunkRows, (N + 65534) / 65535); }

// kLayerNorm: partials (2, chunks, C) = [dbias | dweight] of LayerNorm; else partials (chunks, C)
// = column sums of dout (inp, mean, rstd unused).
template <bool kLayerNorm>
__global__ void ColumnPartialsKernel(float* partials, const float* dout, const float* inp,
                                     const float* mean, const float* rstd, int64_t N, int64_t C,
                                     int64_t chunk_rows) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t r0 = chunk * chunk_rows;
  const int64_t r1 = min(N, r0 + chunk_rows);
  float db = 0.0f, dw = 0.0f;
  if (col < C) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColRowThreads) {
      const float d = dout[r * C + col];
      db += d;
      if constexpr (kLayerNorm) dw += (inp[r * C + col] - mean[r]) * rstd[r] * d;
    }
  }
  __shared__ float sdb[kColRowThreads][kColTile];
  __shared__ float sdw[kColRowThreads][kColTile];
  sdb[threadIdx.y][threadIdx.x] = db;
  sdw[threadIdx.y][threadIdx.x] = dw;
  __syncthreads();
  if (threadIdx.y != 0 || col >= C) return;
  db = 0.0f;
  dw = 0.0f;
  for (int y = 0; y < kColRowThreads; ++y) {
    db += sdb[y][threadIdx.x];
    dw += sdw[y][threadIdx.x];
  }
  partials[chunk * C + col] = db;
  if constexpr (kLayerNorm) partials[(gridDim.y + chunk) * C + col] = dw;
}

// out (C) += sum over chunks of partials (chunks, C), chunk 0 first.
__global__ void ColumnFinishKernel(float* out, const float* partials, int64_t chunks, int64_t C) {
  for (int64_t col = GlobalThread(); col < C; col += GridStride()) {
    float s = 0.0f;
    for (int64_t k = 0; k < chunks; ++k) s += partials[k * C + col];
    out[col] += s;
  }
}

// ---- LayerNorm: one warp per row ------------------------------------------------------------
constexpr int kRowsPerBlock = kThreads / 32;

__global__ void LayerNormForwardKernel(float* out, float* mean, float* rstd, const float* inp,
                                       const float* weight, const float* bias, int64_t N,
                                       int64_t C) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // the whole warp: n is the same on every lane
  const float* x = inp + n * C;
  float sum = 0.0f;
  for (int64_t i = lane; i < C; i += 32) sum += x[i];
  const float m = WarpSum(sum) / static_cast<float>(C);
  float var = 0.0f;
  for (int64_t i = lane; i < C; i += 32) var += (x[i] - m) * (x[i] - m);
  var = WarpSum(var) / static_cast<float>(C);
  const float s = 1.0f / sqrtf(var + 1e-5f);
  float* o = out + n * C;
  for (int64_t i = lane; i < C; i += 32) o[i] = (x[i] - m) * s * weight[i] + bias[i];
  if (lane == 0) {
    mean[n] = m;
    rstd[n] = s;
  }
}

// dinp (N, C) += the input gradient, one warp per row.
__global__ void LayerNormBackwardInputKernel(float* dinp, const float* dout, const float* inp,
                                             const float* weight, const float* mean,
                                             const float* rstd, int64_t N, int64_t C) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (n >= N) return;
  const float* x = inp + n * C;
  const float* d = dout + n * C;
  const float m = mean[n], s = rstd[n];
  float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
  for (int64_t i = lane; i < C; i += 32) {
    const float norm = (x[i] - m) * s;
    const float dnorm = weight[i] * d[i];
    dnorm_mean += dnorm;
    dnorm_norm_mean += dnorm * norm;
  }
  dnorm_mean = WarpSum(dnorm_mean) / static_cast<float>(C);
  dnorm_norm_mean = WarpSum(dnorm_norm_mean) / static_cast<float>(C);
  float* di = dinp + n * C;
  for (int64_t i = lane; i < C; i += 32) {
    const float norm = (x[i] - m) * s;
    const float dnorm = weight[i] * d[i];
    di[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
  }
}

// ---- GELU (tanh approximation) ----------------------------------------------------------------
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)

__global__ void GeluForwardKernel(float* out, const float* inp, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const float x = inp[i];
    const float u = kGeluScale * (x + 0.044715f * x * x * x);
    out[i] = 0.5f * x * (1.0f + tanhf(u));
  }
}

// dinp may alias dout: each element is read before the same thread writes it.
__global__ void GeluBackwardKernel(float* dinp, const float* inp, const float* dout, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const float x = inp[i];
    const float u = kGeluScale * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float sech2 = 1.0f - th * th;
    const float grad =
        0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = grad * dout[i];
  }
}

// ---- embeddings ---------------------------------------------------------------------------------
__global__ void EmbeddingForwardKernel(float* out, const int32_t* tokens, const float* wte,
                                       const float* wpe, int64_t T, int64_t C, int64_t pos_offset,
                                       int64_t total) {
  for (int64_t idx = GlobalThread(); idx < total; idx += GridStride()) {
    const int64_t bt = idx / C, i = idx % C;
    const int64_t t = bt % T;
    out[idx] = wte[static_cast<int64_t>(tokens[bt]) * C + i] + wpe[(pos_offset + t) * C + i];
  }
}

// dwpe[pos_offset + t] += dout[b, t] for b = 0, 1, ... in turn: the CPU kernel's order.
__global__ void EmbeddingBackwardPositionKernel(float* dwpe, const float* dout, int64_t B,
                                                int64_t T, int64_t C, int64_t pos_offset) {
  for (int64_t idx = GlobalThread(); idx < T * C; idx += GridStride()) {
    const int64_t t = idx / C, i = idx % C;
    float* p = dwpe + (pos_offset + t) * C + i;
    float acc = *p;
    for (int64_t b = 0; b < B; ++b) acc += dout[(b * T + t) * C + i];
    *p = acc;
  }
}

__global__ void IotaKernel(int32_t* x, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) x[i] = static_cast<int32_t>(i);
}

// After a stable sort of the positions by token: block i handles the run of equal tokens that
// starts at sorted index i (other blocks exit). Each thread owns channels and adds the run's
// dout rows in position order, then adds the total to dwte once. No two blocks share a token, so
// there is no race and the order is fixed.
__global__ void EmbeddingBackwardTokenKernel(float* dwte, const float* dout,
                                             const int32_t* sorted_tokens,
                                             const int32_t* sorted_pos, int64_t N, int64_t C) {
  const int64_t start = blockIdx.x;
  const int32_t token = sorted_tokens[start];
  if (start > 0 && sorted_tokens[start - 1] == token) return;
  // The run's end: the first index past start whose token is larger (binary search).
  int64_t lo = start + 1, hi = N;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted_tokens[mid] == token) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int64_t end = lo;
  float* row = dwte + static_cast<int64_t>(token) * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = start; j < end; ++j) acc += dout[static_cast<int64_t>(sorted_pos[j]) * C + c];
    row[c] += acc;
  }
}

// ---- fused softmax + cross-entropy: one block per row -------------------------------------------
constexpr int kRowThreads = 512;

// (max, sum of exp(x - max)) pairs, merged. A side with no elements has max -inf and sum 0.
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum Merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

// The block's merged pair, returned to every thread. A fixed tree: warps fold down to lane 0, then
// warp 0 folds the warps' results.
__device__ MaxSum BlockMaxSum(MaxSum v) {
  __shared__ MaxSum warp_results[kRowThreads / 32];
  __shared__ MaxSum result;
  for (int offset = 16; offset > 0; offset >>= 1) {
    MaxSum other = {__shfl_down_sync(0xffffffffu, v.max, offset),
                    __shfl_down_sync(0xffffffffu, v.sum, offset)};
    v = Merge(v, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kRowThreads / 32 ? warp_results[lane] : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset >>= 1) {
      MaxSum other = {__shfl_down_sync(0xffffffffu, v.max, offset),
                      __shfl_down_sync(0xffffffffu, v.sum, offset)};
      v = Merge(v, other);
    }
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

__global__ void __launch_bounds__(kRowThreads)
    CrossEntropyForwardKernel(float* losses, float* lse, const float* logits,
                              const int32_t* targets, int64_t V, int64_t Vp) {
  const int64_t n = blockIdx.x;
  const float* x = logits + n * Vp;
  // Online softmax: one pass over the row; the running sum is rescaled when the max grows.
  MaxSum acc = {-INFINITY, 0.0f};
  for (int64_t j = threadIdx.x; j < V; j += kRowThreads) {
    const float v = x[j];
    if (v > acc.max) {
      acc.sum = acc.sum * expf(acc.max - v) + 1.0f;  // expf(-inf) = 0 on the first element
      acc.max = v;
    } else if (acc.max != -INFINITY) {
      acc.sum += expf(v - acc.max);
    }
  }
  acc = BlockMaxSum(acc);
  if (threadIdx.x == 0) {
    const float z = acc.max + logf(acc.sum);
    const int32_t t = targets[n];
    lse[n] = z;
    losses[n] = t < 0 ? 0.0f : z - x[t];
  }
}

// dlogits may alias logits: each element is read by the thread that then writes it.
__global__ void __launch_bounds__(kRowThreads)
    CrossEntropyBackwardKernel(float* dlogits, const float* logits, const float* lse,
                               const int32_t* targets, float dloss, int64_t V, int64_t Vp) {
  const int64_t n = blockIdx.x;
  const float* x = logits + n * Vp;
  float* d = dlogits + n * Vp;
  const int32_t t = targets[n];
  if (t < 0) {
    for (int64_t j = threadIdx.x; j < Vp; j += kRowThreads) d[j] = 0.0f;
    return;
  }
  const float z = lse[n];
  for (int64_t j = threadIdx.x; j < V; j += kRowThreads) {
    // __fmul_rn: rounded before the target's subtraction, as the CPU's two separate stores.
    float g = __fmul_rn(dloss, expf(x[j] - z));
    if (j == t) g -= dloss;
    d[j] = g;
  }
  for (int64_t j = V + threadIdx.x; j < Vp; j += kRowThreads) d[j] = 0.0f;
}

// ---- small elementwise helpers --------------------------------------------------------------
__global__ void F32ToBf16Kernel(uint16_t* out, const float* in, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) out[i] = FloatToBf16Bits(in[i]);
}

// Four at a time: one 16-byte load and one 8-byte store per thread (the products' operand casts
// are pure bandwidth; element 0 goes to the low half, as in memory).
__global__ void F32ToBf16x4Kernel(uint2* out, const float4* in, int64_t n4) {
  for (int64_t i = GlobalThread(); i < n4; i += GridStride()) {
    const float4 v = in[i];
    uint2 o;
    o.x = static_cast<uint32_t>(FloatToBf16Bits(v.x)) |
          (static_cast<uint32_t>(FloatToBf16Bits(v.y)) << 16);
    o.y = static_cast<uint32_t>(FloatToBf16Bits(v.z)) |
          (static_cast<uint32_t>(FloatToBf16Bits(v.w)) << 16);
    out[i] = o;
  }
}

__global__ void AxpyKernel(float* y, float alpha, const float* x, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) y[i] += alpha * x[i];
}

__global__ void FmaKernel(float* y, float a, const float* z, const float* x, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) y[i] = fmaf(a, z[i], x[i]);
}

__global__ void ApplyMaskKernel(float* x, const uint8_t* mask, int64_t n) {
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) x[i] = mask[i] ? x[i] : 0.0f;
}

// ---- Sum, SquaredNorm: a fixed grid writes one double per block, one block adds them ----------
constexpr int kReduceBlocks = 256;
constexpr int kReduceThreads = 256;

// A fixed tree over the block's doubles; the result is in s[0].
__device__ void BlockTreeSum(double* s) {
  for (int width = kReduceThreads / 2; width > 0; width >>= 1) {
    __syncthreads();
    if (threadIdx.x < width) s[threadIdx.x] += s[threadIdx.x + width];
  }
  __syncthreads();
}

template <bool kSquare>
__global__ void __launch_bounds__(kReduceThreads)
    ReducePartialsKernel(double* partials, const float* x, int64_t n) {
  __shared__ double s[kReduceThreads];
  double acc = 0.0;
  for (int64_t i = GlobalThread(); i < n; i += GridStride()) {
    const double v = x[i];
    acc += kSquare ? v * v : v;  // v * v is exact in double: fused or not, the same sum
  }
  s[threadIdx.x] = acc;
  BlockTreeSum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s[0];
}

__global__ void __launch_bounds__(kReduceThreads)
    ReduceFinishKernel(double* result, const double* partials) {
  __shared__ double s[kReduceThreads];
  s[threadIdx.x] = partials[threadIdx.x];
  BlockTreeSum(s);
  if (threadIdx.x == 0) *result = s[0];
}

static_assert(kReduceBlocks == kReduceThreads, "ReduceFinishKernel: one thread per partial");

template <bool kSquare>
void Reduce(cudaStream_t s, double* result, const float* x, int64_t n) {
  // The scratch is per call (stream-ordered), so concurrent calls on other streams cannot clash.
  double* partials = nullptr;
  MT_CUDA_CHECK(cudaMallocAsync(&partials, kReduceBlocks * sizeof(double), s));
  ReducePartialsKernel<kSquare><<<kReduceBlocks, kReduceThreads, 0, s>>>(partials, x, n);
  MT_CUDA_CHECK_LAUNCH();
  ReduceFinishKernel<<<1, kReduceThreads, 0, s>>>(result, partials);
  MT_CUDA_CHECK_LAUNCH();
  MT_CUDA_CHECK(cudaFreeAsync(partials, s));
}

// Column sums of dout (N, C) into out (C) (+=): a BiasBackward, or with kLayerNorm the
// dbias (out) and dweight (out2) of LayerNorm.
template <bool kLayerNorm>
void ColumnSums(cudaStream_t s, float* out, float* out2, const float* dout, const float* inp,
                const float* mean, const float* rstd, int64_t N, int64_t C) {
  const int64_t chunk_rows = ChunkRows(N);
  const int64_t chunks = (N + chunk_rows - 1) / chunk_rows;
  const int64_t arrays = kLayerNorm ? 2 : 1;
  float* partials = nullptr;
  MT_CUDA_CHECK(cudaMallocAsync(&partials, arrays * chunks * C * sizeof(float), s));
  const dim3 grid(static_cast<unsigned>((C + kColTile - 1) / kColTile),
                  static_cast<unsigned>(chunks));
  const dim3 block(kColTile, kColRowThreads);
  ColumnPartialsKernel<kLayerNorm>
      <<<grid, block, 0, s>>>(partials, dout, inp, mean, rstd, N, C, chunk_rows);
  MT_CUDA_CHECK_LAUNCH();
  ColumnFinishKernel<<<GridFor(C), kThreads, 0, s>>>(out, partials, chunks, C);
  MT_CUDA_CHECK_LAUNCH();
  if constexpr (kLayerNorm) {
    ColumnFinishKernel<<<GridFor(C), kThreads, 0, s>>>(out2, partials + chunks * C, chunks, C);
    MT_CUDA_CHECK_LAUNCH();
  }
  MT_CUDA_CHECK(cudaFreeAsync(partials, s));
}

// Byte offset rounded up for the next sub-buffer of one allocation.
size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

// ---- launchers ------------------------------------------------------------------------------

void LayerNormForward(cudaStream_t s, float* out, float* mean, float* rstd, const float* inp,
                      const float* weight, const float* bias, int64_t N, int64_t C) {
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  LayerNormForwardKernel<<<blocks, kThreads, 0, s>>>(out, mean, rstd, inp, weight, bias, N, C);
  MT_CUDA_CHECK_LAUNCH();
}

void LayerNormBackward(cudaStream_t s, float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  LayerNormBackwardInputKernel<<<blocks, kThreads, 0, s>>>(dinp, dout, inp, weight, mean, rstd, N,
                                                           C);
  MT_CUDA_CHECK_LAUNCH();
  ColumnSums<true>(s, dbias, dweight, dout, inp, mean, rstd, N, C);
}

void GeluForward(cudaStream_t s, float* out, const float* inp, int64_t n) {
  if (n == 0) return;
  GeluForwardKernel<<<GridFor(n), kThreads, 0, s>>>(out, inp, n);
  MT_CUDA_CHECK_LAUNCH();
}

void GeluBackward(cudaStream_t s, float* dinp, const float* inp, const float* dout, int64_t n) {
  if (n == 0) return;
  GeluBackwardKernel<<<GridFor(n), kThreads, 0, s>>>(dinp, inp, dout, n);
  MT_CUDA_CHECK_LAUNCH();
}

void EmbeddingForward(cudaStream_t s, float* out, const int32_t* tokens, const float* wte,
                      const float* wpe, int64_t B, int64_t T, int64_t C, int64_t pos_offset) {
  const int64_t total = B * T * C;
  if (total == 0) return;
  EmbeddingForwardKernel<<<GridFor(total), kThreads, 0, s>>>(out, tokens, wte, wpe, T, C,
                                                             pos_offset, total);
  MT_CUDA_CHECK_LAUNCH();
}

// dwte: a stable radix sort of the positions by token (cub), then one block per run of equal
// tokens (EmbeddingBackwardTokenKernel). Every token's row gets its positions' gradients in
// position order, whatever the scheduling, at the cost of a sort of N keys (tens of microseconds
// for N = 16384) and some blocks that exit at once.
void EmbeddingBackward(cudaStream_t s, float* dwte, float* dwpe, const float* dout,
                       const int32_t* tokens, int64_t B, int64_t T, int64_t C, int64_t pos_offset) {
  const int64_t N = B * T;
  if (N == 0 || C == 0) return;
  if (dwpe != nullptr) {
    EmbeddingBackwardPositionKernel<<<GridFor(T * C), kThreads, 0, s>>>(dwpe, dout, B, T, C,
                                                                        pos_offset);
    MT_CUDA_CHECK_LAUNCH();
  }
  if (N > INT32_MAX) {
    std::fprintf(stderr, "cuda::EmbeddingBackward: B*T = %lld positions exceed 2^31 - 1\n",
                 static_cast<long long>(N));
    std::abort();
  }
  const int num = static_cast<int>(N);
  size_t sort_bytes = 0;
  MT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, tokens, static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), num, 0, 32, s));
  // One allocation: sorted tokens, positions, sorted positions, cub's scratch.
  const size_t ints = AlignUp(N * sizeof(int32_t));
  char* scratch = nullptr;
  MT_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), 3 * ints + sort_bytes, s));
  int32_t* sorted_tokens = reinterpret_cast<int32_t*>(scratch);
  int32_t* pos = reinterpret_cast<int32_t*>(scratch + ints);
  int32_t* sorted_pos = reinterpret_cast<int32_t*>(scratch + 2 * ints);
  void* sort_scratch = scratch + 3 * ints;
  IotaKernel<<<GridFor(N), kThreads, 0, s>>>(pos, N);
  MT_CUDA_CHECK_LAUNCH();
  MT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_scratch, sort_bytes, tokens, sorted_tokens,
                                                pos, sorted_pos, num, 0, 32, s));
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (C + 31) / 32 * 32));
  EmbeddingBackwardTokenKernel<<<static_cast<unsigned>(N), threads, 0, s>>>(
      dwte, dout, sorted_tokens, sorted_pos, N, C);
  MT_CUDA_CHECK_LAUNCH();
  MT_CUDA_CHECK(cudaFreeAsync(scratch, s));
}

void CrossEntropyForward(cudaStream_t s, float* losses, float* lse, const float* logits,
                         const int32_t* targets, int64_t N, int64_t V, int64_t Vp) {
  if (N == 0) return;
  CrossEntropyForwardKernel<<<static_cast<unsigned>(N), kRowThreads, 0, s>>>(losses, lse, logits,
                                                                             targets, V, Vp);
  MT_CUDA_CHECK_LAUNCH();
}

void CrossEntropyBackward(cudaStream_t s, float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float dloss, int64_t N, int64_t V, int64_t Vp) {
  if (N == 0) return;
  CrossEntropyBackwardKernel<<<static_cast<unsigned>(N), kRowThreads, 0, s>>>(
      dlogits, logits, lse, targets, dloss, V, Vp);
  MT_CUDA_CHECK_LAUNCH();
}

void BiasBackward(cudaStream_t s, float* dbias, const float* dout, int64_t N, int64_t OC) {
  if (N == 0 || OC == 0) return;
  ColumnSums<false>(s, dbias, nullptr, dout, nullptr, nullptr, nullptr, N, OC);
}

void F32ToBf16(cudaStream_t s, uint16_t* out, const float* in, int64_t n) {
  if (n == 0) return;
  int64_t done = 0;
  if (reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    const int64_t n4 = n / 4;
    if (n4 > 0) {
      F32ToBf16x4Kernel<<<GridFor(n4), kThreads, 0, s>>>(reinterpret_cast<uint2*>(out),
                                                         reinterpret_cast<const float4*>(in), n4);
      MT_CUDA_CHECK_LAUNCH();
    }
    done = n4 * 4;
  }
  if (done < n) {
    F32ToBf16Kernel<<<GridFor(n - done), kThreads, 0, s>>>(out + done, in + done, n - done);
    MT_CUDA_CHECK_LAUNCH();
  }
}

void Sum(cudaStream_t s, double* result, const float* x, int64_t n) {
  Reduce<false>(s, result, x, n);
}

void SquaredNorm(cudaStream_t s, double* result, const float* x, int64_t n) {
  Reduce<true>(s, result, x, n);
}

void Fma(cudaStream_t s, float* y, float a, const float* z, const float* x, int64_t n) {
  if (n == 0) return;
  FmaKernel<<<GridFor(n), kThreads, 0, s>>>(y, a, z, x, n);
  MT_CUDA_CHECK_LAUNCH();
}

void Axpy(cudaStream_t s, float* y, float alpha, const float* x, int64_t n) {
  if (n == 0) return;
  AxpyKernel<<<GridFor(n), kThreads, 0, s>>>(y, alpha, x, n);
  MT_CUDA_CHECK_LAUNCH();
}

void ApplyMask(cudaStream_t s, float* x, const uint8_t* mask, int64_t n) {
  if (n == 0) return;
  ApplyMaskKernel<<<GridFor(n), kThreads, 0, s>>>(x, mask, n);
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace memtrain::core::cuda
