// Device code of the causal attention kernels (private to core/kernels/cuda/attention.cu, which
// holds the launchers). It lives in a header of its own so that a host-side emulation, one
// std::thread per CUDA thread, can compile and run exactly this code against the CPU kernel.
//
// Layouts (core/kernels/cpu/ops.h): qkv (B, T, 3C), row (b, t) = [q | k | v], head h at columns
// h*HS .. (h+1)*HS of each part; out and dout (B, T, C); lse (B, NH, T) = log-sum-exp of each
// query's scaled scores; dqkv (B, T, 3C) written. scale = 1/sqrt(HS); query i sees keys j <= i.
//
// Backward scratch: D_i = dout_i . out_i is computed first by DeltaKernel into column 0 of the
// query's dq slot (dqkv[b, i, h*HS]); the dK/dV kernel reads it there, and the dQ kernel reads it
// into shared memory before the block that owns those rows overwrites them with dq. No
// workspace is needed and every output element is written by one thread in a fixed order, so the
// results are deterministic.
#ifndef MEMTRAIN_CORE_KERNELS_CUDA_ATTENTION_TILES_CUH_
#define MEMTRAIN_CORE_KERNELS_CUDA_ATTENTION_TILES_CUH_

#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <cstdint>

namespace memtrain::core::cuda::attention_tiles {

// ---- helpers shared by both paths -----------------------------------------------------------

__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Blocks are numbered rank-major (blockIdx.x = rank * B*NH + b*NH + h) so that the tiles with the
// most work (rank 0) start first whatever B and NH are.
struct TileIndex {
  int64_t b, h, rank;
};
__device__ __forceinline__ TileIndex BlockTile(int64_t B, int64_t NH) {
  const int64_t x = blockIdx.x;
  const int64_t bh = x % (B * NH);
  return {bh / NH, bh % NH, x / (B * NH)};
}

// D_i = dout_i . out_i for every (b, i, h), stored at dqkv[(b*T + i)*3C + h*HS].
__global__ void DeltaKernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                            const float* __restrict__ out, int64_t B, int64_t T, int64_t C,
                            int64_t NH, int HS) {
  const int64_t n = B * T * NH;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += stride) {
    const int64_t bt = idx / NH, h = idx % NH;  // bt = b*T + i
    const float* o = out + bt * C + h * HS;
    const float* d_o = dout + bt * C + h * HS;
    float D = 0.0f;
    for (int d = 0; d < HS; ++d) D += d_o[d] * o[d];
    dqkv[bt * 3 * C + h * HS] = D;
  }
}

// ---- fp32 path ------------------------------------------------------------------------------
// A row (query or key) of the block belongs to a group of kGroup consecutive threads; thread g of
// the group owns 16 of the padded kHS dims, as 4 float4 chunks c = 0..3 at float4 index
// c*kGroup + g of the row. Interleaving the chunks makes the kGroup threads read consecutive
// float4s of a shared-memory row (no bank conflicts; the other groups read the same addresses:
// a broadcast). Dot products are summed over the group with xor shuffles, which give every lane
// of the group the same bits (each step adds the same two values, and addition commutes).
// Dims >= HS are zero in registers and in shared memory, so they add nothing.
template <int kHS>
struct F32 {
  static_assert(kHS == 16 || kHS == 32 || kHS == 64 || kHS == 128);
  static constexpr int kGroup = kHS / 16;                        // threads per row
  static constexpr int kRows = kGroup <= 4 ? 64 : 256 / kGroup;  // rows per block
  static constexpr int kThreads = kRows * kGroup;                // <= 256
  static constexpr int kInner = 32;  // rows of the other side per shared-memory tile
  // Two (kInner, kHS) fp32 tiles and two kInner vectors.
  static constexpr int kSmemBytes = 2 * kInner * kHS * 4 + 2 * kInner * 4;
};

// x (16) = this thread's dims of row[0 .. HS) times mul; zero where !ok or d >= HS.
template <int G>
__device__ __forceinline__ void LoadSlice(float (&x)[16], const float* row, bool ok, int HS, int g,
                                          float mul) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = 4 * (c * G + g) + e;
      x[4 * c + e] = (ok && d < HS) ? row[d] * mul : 0.0f;
    }
  }
}

template <int G>
__device__ __forceinline__ void StoreSlice(float* row, const float (&x)[16], int HS, int g,
                                           float mul) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = 4 * (c * G + g) + e;
      if (d < HS) row[d] = x[4 * c + e] * mul;
    }
  }
}

// This thread's partial dot product of x with a shared-memory row (kHS/4 float4s).
template <int G>
__device__ __forceinline__ float SliceDot(const float (&x)[16], const float4* row, int g) {
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float4 v = row[c * G + g];
    s += x[4 * c] * v.x + x[4 * c + 1] * v.y + x[4 * c + 2] * v.z + x[4 * c + 3] * v.w;
  }
  return s;
}

// y += a * (this thread's dims of a shared-memory row).
template <int G>
__device__ __forceinline__ void SliceAxpy(float (&y)[16], float a, const float4* row, int g) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float4 v = row[c * G + g];
    y[4 * c] += a * v.x;
    y[4 * c + 1] += a * v.y;
    y[4 * c + 2] += a * v.z;
    y[4 * c + 3] += a * v.w;
  }
}

template <int G>
__device__ __forceinline__ float GroupSum(float x) {
#pragma unroll
  for (int o = G / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// dst (kRowsT, kHS) fp32 in shared memory (kThreads threads) = rows row0 .. row0 + kRowsT of src
// (row stride ld), zero for rows >= T and dims >= HS.
template <int kHS, int kRowsT, int kThreads>
__device__ __forceinline__ void LoadTileF32(float* dst, const float* src, int64_t ld, int64_t row0,
                                            int64_t T, int HS) {
#pragma unroll
  for (int idx = threadIdx.x; idx < kRowsT * kHS; idx += kThreads) {
    const int r = idx / kHS, d = idx % kHS;
    const int64_t t = row0 + r;
    dst[idx] = (t < T && d < HS) ? src[t * ld + d] : 0.0f;
  }
}

// Forward. Block: kRows queries of one (b, h); key tiles of kInner rows through shared memory;
// per query a running max m, sum l and unnormalised output acc (online softmax), all fp32.
template <int kHS>
__global__ void __launch_bounds__(F32<kHS>::kThreads)
    ForwardF32Kernel(float* __restrict__ out, float* __restrict__ lse,
                     const float* __restrict__ qkv, int64_t B, int64_t T, int64_t C, int64_t NH,
                     int HS, float scale) {
  using Cfg = F32<kHS>;
  constexpr int G = Cfg::kGroup, kKT = Cfg::kInner, kVec = kHS / 4;
  extern __shared__ __align__(128) unsigned char smem[];
  float* ks = reinterpret_cast<float*>(smem);  // (kKT, kHS)
  float* vs = ks + kKT * kHS;                  // (kKT, kHS)
  const float4* ks4 = reinterpret_cast<const float4*>(ks);
  const float4* vs4 = reinterpret_cast<const float4*>(vs);

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + Cfg::kRows - 1) / Cfg::kRows;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * Cfg::kRows;  // rank 0: the last queries
  const int64_t i1 = Min64(T, i0 + Cfg::kRows);
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const int64_t i = i0 + r;
  // The last key this row sees. Rows past T (padding of the last tile) mirror row T-1 so that
  // every row has a finite max; they are never written.
  const int64_t jlast = Min64(i, T - 1);
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * HS;  // q of row t at base + t*C3

  float q[16], acc[16];
  LoadSlice<G>(q, base + jlast * C3, i < T, HS, g, scale);
#pragma unroll
  for (int k = 0; k < 16; ++k) acc[k] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int64_t j0 = 0; j0 < i1; j0 += kKT) {
    __syncthreads();  // the previous tile has been consumed
    LoadTileF32<kHS, kKT, Cfg::kThreads>(ks, base + C, C3, j0, T, HS);
    LoadTileF32<kHS, kKT, Cfg::kThreads>(vs, base + 2 * C, C3, j0, T, HS);
    __syncthreads();
    float s[kKT];
    float mx = m;
#pragma unroll
    for (int jj = 0; jj < kKT; ++jj) {
      const float dot = GroupSum<G>(SliceDot<G>(q, ks4 + jj * kVec, g));
      s[jj] = (j0 + jj <= jlast) ? dot : -INFINITY;
      mx = fmaxf(mx, s[jj]);
    }
    // mx is finite: key 0 is in the first tile and every row sees it.
    const float corr = expf(m - mx);
    l *= corr;
#pragma unroll
    for (int k = 0; k < 16; ++k) acc[k] *= corr;
#pragma unroll
    for (int jj = 0; jj < kKT; ++jj) {
      const float p = expf(s[jj] - mx);  // 0 for masked keys
      l += p;
      SliceAxpy<G>(acc, p, vs4 + jj * kVec, g);
    }
    m = mx;
  }
  if (i < T) {
    StoreSlice<G>(out + (ti.b * T + i) * C + ti.h * HS, acc, HS, g, 1.0f / l);
    if (g == 0) lse[(ti.b * NH + ti.h) * T + i] = m + logf(l);
  }
}

// dK, dV. Block: kRows keys of one (b, h) (k, v, dk, dv in registers); walks the query tiles
// from its own first key to T, kInner queries (q, dout, lse, D) at a time through shared memory.
template <int kHS>
__global__ void __launch_bounds__(F32<kHS>::kThreads)
    DkDvF32Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                  const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B,
                  int64_t T, int64_t C, int64_t NH, int HS, float scale) {
  using Cfg = F32<kHS>;
  constexpr int G = Cfg::kGroup, kQT = Cfg::kInner, kVec = kHS / 4;
  extern __shared__ __align__(128) unsigned char smem[];
  float* qs = reinterpret_cast<float*>(smem);  // (kQT, kHS)
  float* dos = qs + kQT * kHS;                 // (kQT, kHS)
  float* lse_s = dos + kQT * kHS;              // (kQT)
  float* d_s = lse_s + kQT;                    // (kQT)
  const float4* qs4 = reinterpret_cast<const float4*>(qs);
  const float4* dos4 = reinterpret_cast<const float4*>(dos);

  const TileIndex ti = BlockTile(B, NH);
  const int64_t j0 = ti.rank * Cfg::kRows;  // rank 0: the first keys, seen by every query
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const int64_t j = j0 + r;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * HS;
  const float* dout_bh = dout + ti.b * T * C + ti.h * HS;
  const float* lse_bh = lse + (ti.b * NH + ti.h) * T;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * HS;  // D of query t at dbase[t*C3]

  float k[16], v[16], dk[16], dv[16];
  const int64_t jc = Min64(j, T - 1);
  LoadSlice<G>(k, base + jc * C3 + C, j < T, HS, g, 1.0f);
  LoadSlice<G>(v, base + jc * C3 + 2 * C, j < T, HS, g, 1.0f);
#pragma unroll
  for (int x = 0; x < 16; ++x) dk[x] = dv[x] = 0.0f;

  for (int64_t i0 = j0; i0 < T; i0 += kQT) {
    __syncthreads();  // the previous tile has been consumed
    LoadTileF32<kHS, kQT, Cfg::kThreads>(qs, base, C3, i0, T, HS);
    LoadTileF32<kHS, kQT, Cfg::kThreads>(dos, dout_bh, C, i0, T, HS);
    for (int x = threadIdx.x; x < kQT; x += Cfg::kThreads) {
      const int64_t i = i0 + x;
      lse_s[x] = i < T ? lse_bh[i] : 0.0f;
      d_s[x] = i < T ? dbase[i * C3] : 0.0f;
    }
    __syncthreads();
#pragma unroll 2
    for (int ii = 0; ii < kQT; ++ii) {
      const float sdot = GroupSum<G>(SliceDot<G>(k, qs4 + ii * kVec, g));
      const float pdot = GroupSum<G>(SliceDot<G>(v, dos4 + ii * kVec, g));
      const int64_t i = i0 + ii;
      float p = 0.0f, ds = 0.0f;
      if (i < T && j <= i) {
        p = expf(scale * sdot - lse_s[ii]);
        ds = p * (pdot - d_s[ii]) * scale;
      }
      SliceAxpy<G>(dv, p, dos4 + ii * kVec, g);
      SliceAxpy<G>(dk, ds, qs4 + ii * kVec, g);
    }
  }
  if (j < T) {
    StoreSlice<G>(dbase + j * C3 + C, dk, HS, g, 1.0f);
    StoreSlice<G>(dbase + j * C3 + 2 * C, dv, HS, g, 1.0f);
  }
}

// dQ. Block: kRows queries of one (b, h) (q, dout, dq, lse, D in registers); walks the key tiles
// up to its diagonal, kInner keys at a time through shared memory.
template <int kHS>
__global__ void __launch_bounds__(F32<kHS>::kThreads)
    DqF32Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B, int64_t T,
                int64_t C, int64_t NH, int HS, float scale) {
  using Cfg = F32<kHS>;
  constexpr int G = Cfg::kGroup, kKT = Cfg::kInner, kVec = kHS / 4;
  extern __shared__ __align__(128) unsigned char smem[];
  float* ks = reinterpret_cast<float*>(smem);  // (kKT, kHS)
  float* vs = ks + kKT * kHS;                  // (kKT, kHS)
  const float4* ks4 = reinterpret_cast<const float4*>(ks);
  const float4* vs4 = reinterpret_cast<const float4*>(vs);

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + Cfg::kRows - 1) / Cfg::kRows;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * Cfg::kRows;
  const int64_t i1 = Min64(T, i0 + Cfg::kRows);
  const int r = threadIdx.x / G, g = threadIdx.x % G;
  const int64_t i = i0 + r;
  const int64_t ic = Min64(i, T - 1);
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * HS;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * HS;

  float q[16], d_o[16], dq[16];
  LoadSlice<G>(q, base + ic * C3, i < T, HS, g, 1.0f);
  LoadSlice<G>(d_o, dout + (ti.b * T + ic) * C + ti.h * HS, i < T, HS, g, 1.0f);
#pragma unroll
  for (int x = 0; x < 16; ++x) dq[x] = 0.0f;
  const float lse_i = i < T ? lse[(ti.b * NH + ti.h) * T + i] : 0.0f;
  const float D_i = i < T ? dbase[i * C3] : 0.0f;  // read before anyone writes dq (see below)

  for (int64_t j0 = 0; j0 < i1; j0 += kKT) {
    __syncthreads();
    LoadTileF32<kHS, kKT, Cfg::kThreads>(ks, base + C, C3, j0, T, HS);
    LoadTileF32<kHS, kKT, Cfg::kThreads>(vs, base + 2 * C, C3, j0, T, HS);
    __syncthreads();
#pragma unroll 2
    for (int jj = 0; jj < kKT; ++jj) {
      const float sdot = GroupSum<G>(SliceDot<G>(q, ks4 + jj * kVec, g));
      const float pdot = GroupSum<G>(SliceDot<G>(d_o, vs4 + jj * kVec, g));
      float ds = 0.0f;
      if (i < T && j0 + jj <= i) {
        const float p = expf(scale * sdot - lse_i);
        ds = p * (pdot - D_i) * scale;
      }
      SliceAxpy<G>(dq, ds, ks4 + jj * kVec, g);
    }
  }
  __syncthreads();  // every thread of the block has read its D before dq overwrites them
  if (i < T) StoreSlice<G>(dbase + i * C3, dq, HS, g, 1.0f);
}

// ---- bf16 tensor-core path (HS == 64) -------------------------------------------------------
// wmma 16x16x16 tiles, bf16 inputs, fp32 accumulators. A block has 4 warps and a tile of 64 rows
// (queries, or keys for dK/dV); warp w owns rows 16w .. 16w+15 of it and touches only those rows
// of the per-warp buffers (S, P, O, ...), so those need only __syncwarp; the shared tiles of the
// other side (K, V or Q, dO) are guarded by __syncthreads. Softmax statistics, p and ds are
// computed in fp32 from the fp32 scores stored to shared memory. The fragment element layout is
// never relied on: per-row work goes through shared memory.
namespace tc {

namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kHS = 64;
constexpr int kTile = 64;      // rows of a block's tile and of each tile it walks
constexpr int kThreads = 128;  // 4 warps x 16 rows
constexpr int kLdh = 72;       // bf16 row stride (elements): a multiple of 8, rows 32-byte aligned
constexpr int kLdf = 68;       // fp32 row stride (elements): a multiple of 4, rows 16-byte aligned
constexpr int kTileH = kTile * kLdh * sizeof(__nv_bfloat16);  // bytes of a bf16 tile: 9216
constexpr int kTileF = kTile * kLdf * sizeof(float);          // bytes of an fp32 tile: 17408
constexpr int kVecBytes = kTile * sizeof(float);              // bytes of a 64-float vector
static_assert(kTileH % 128 == 0 && kTileF % 128 == 0 && kVecBytes % 128 == 0);
// Every 16x16 fragment starts at a row that is a multiple of 16 and a column that is a multiple
// of 16, so it is 32-byte aligned as wmma requires.
static_assert((16 * kLdh * sizeof(__nv_bfloat16)) % 32 == 0 && (16 * kLdf * 4) % 32 == 0);
static_assert((16 * sizeof(__nv_bfloat16)) % 32 == 0 && (16 * 4) % 32 == 0);

constexpr int kFwdSmemBytes = 4 * kTileH + 2 * kTileF + 2 * kVecBytes;   // 72192
constexpr int kDkDvSmemBytes = 6 * kTileH + 2 * kTileF + 2 * kVecBytes;  // 90624
constexpr int kDqSmemBytes = 5 * kTileH + 2 * kTileF + 2 * kVecBytes;    // 81408

// A (64, 64) fp32 tile on its way from global to shared memory, so that the loads of the next
// tile are in flight while the block computes on the current one. Thread t holds the float4s
// idx = t + 128u (u = 0..7): row idx / 16, columns 4 * (idx % 16) .. +3.
struct TileRegs {
  float4 v[kTile * kHS / 4 / kThreads];
};
static_assert(kTile * kHS / 4 % kThreads == 0);

// Issues the loads of rows row0 .. row0+63 of src (64 floats each, row stride ld), zero for rows
// >= T. vec4: src and ld allow 16-byte loads.
__device__ __forceinline__ void FetchTile(TileRegs& r, const float* src, int64_t ld, int64_t row0,
                                          int64_t T, bool vec4) {
#pragma unroll
  for (int u = 0; u < kTile * kHS / 4 / kThreads; ++u) {
    const int idx = threadIdx.x + kThreads * u;
    const int64_t t = row0 + idx / 16;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t < T) {
      const float* p = src + t * ld + 4 * (idx % 16);
      x = vec4 ? *reinterpret_cast<const float4*>(p) : make_float4(p[0], p[1], p[2], p[3]);
    }
    r.v[u] = x;
  }
}

// dst (64, kLdh) bf16 = the fetched tile, rounded to nearest even.
__device__ __forceinline__ void PutTile(__nv_bfloat16* dst, const TileRegs& r) {
#pragma unroll
  for (int u = 0; u < kTile * kHS / 4 / kThreads; ++u) {
    const int idx = threadIdx.x + kThreads * u;
    __nv_bfloat162* d = reinterpret_cast<__nv_bfloat162*>(dst + (idx / 16) * kLdh + 4 * (idx % 16));
    d[0] = __floats2bfloat162_rn(r.v[u].x, r.v[u].y);
    d[1] = __floats2bfloat162_rn(r.v[u].z, r.v[u].w);
  }
}

// Entry threadIdx.x of a 64-vector: v[t * stride] for t = row0 + threadIdx.x (zero past T, and
// for threads >= 64, which hold nothing).
__device__ __forceinline__ float FetchVec(const float* v, int64_t stride, int64_t row0, int64_t T) {
  const int64_t t = row0 + threadIdx.x;
  return (threadIdx.x < kTile && t < T) ? v[t * stride] : 0.0f;
}

// Forward. Block: 64 queries of one (b, h); key tiles of 64. Per warp and key tile:
// S = Q K^T (16 x 64) to shared fp32; the online softmax, two lanes per row (each half of the
// keys), writes P (bf16), rescales the warp's O rows in shared fp32 and keeps m, l in registers;
// then O += P V with O's fragments loaded from and stored back to shared memory.
__global__ void __launch_bounds__(kThreads, 3)
    ForwardBf16Kernel(float* __restrict__ out, float* __restrict__ lse,
                      const float* __restrict__ qkv, int64_t B, int64_t T, int64_t C, int64_t NH,
                      float scale, bool vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);           // (64, kLdh)
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);  // (64, kLdh)
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kTileH);
  __nv_bfloat16* ps = reinterpret_cast<__nv_bfloat16*>(smem + 3 * kTileH);
  float* ss = reinterpret_cast<float*>(smem + 4 * kTileH);                // (64, kLdf)
  float* os = reinterpret_cast<float*>(smem + 4 * kTileH + kTileF);       // (64, kLdf)
  float* m_s = reinterpret_cast<float*>(smem + 4 * kTileH + 2 * kTileF);  // (64)
  float* l_s = m_s + kTile;                                               // (64)

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + kTile - 1) / kTile;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * kTile;
  const int64_t i1 = Min64(T, i0 + kTile);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = 16 * warp;  // the warp's first row in the tile
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;

  // Softmax: this lane's row and half of the 64 key columns. Lane (r, half) visits its 32
  // columns starting at `skew`, so that at each step the 32 lanes hit 32 different banks
  // (row stride 68 floats shifts a row by 4 banks).
  const int r = lane / 2, half = lane % 2;
  const int skew = 2 * half + (r >= 8 ? 1 : 0);
  const int row = wr + r;
  const int64_t jlast = Min64(i0 + row, T - 1);  // rows past T mirror row T-1; never written
  float* srow = ss + row * kLdf + 32 * half;
  float* orow = os + row * kLdf + 32 * half;
  __nv_bfloat16* prow = ps + row * kLdh + 32 * half;
  float m = -INFINITY, l = 0.0f;  // the same in both lanes of a row

  TileRegs kr, vr;
  FetchTile(kr, base, C3, i0, T, vec4);
  PutTile(qs, kr);
  FetchTile(kr, base + C, C3, 0, T, vec4);
  FetchTile(vr, base + 2 * C, C3, 0, T, vec4);
  for (int c = 0; c < 32; ++c) orow[c] = 0.0f;
  __syncthreads();
  FragA qa[4];  // the warp's 16 queries x 64 dims
#pragma unroll
  for (int k = 0; k < 4; ++k) wmma::load_matrix_sync(qa[k], qs + wr * kLdh + 16 * k, kLdh);

  for (int64_t j0 = 0; j0 < i1; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous K, V
    PutTile(ks, kr);
    PutTile(vs, vr);
    __syncthreads();
    if (j0 + kTile < i1) {
      FetchTile(kr, base + C, C3, j0 + kTile, T, vec4);
      FetchTile(vr, base + 2 * C, C3, j0 + kTile, T, vec4);
    }
    // On the diagonal tile, key sub-tiles n > warp lie after all of this warp's queries: skip
    // them (their scores are masked below whatever ss holds; their p are 0).
    const int n_lim = j0 == i0 ? warp + 1 : 4;
    for (int n = 0; n < n_lim; ++n) {
      FragAcc sacc;
      wmma::fill_fragment(sacc, 0.0f);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        FragBCol kb;  // K^T: element (d, key) at ks[key * kLdh + d]
        wmma::load_matrix_sync(kb, ks + (16 * n) * kLdh + 16 * k, kLdh);
        wmma::mma_sync(sacc, qa[k], kb, sacc);
      }
      wmma::store_matrix_sync(ss + wr * kLdf + 16 * n, sacc, kLdf, wmma::mem_row_major);
    }
    __syncwarp();
    const int64_t jh = j0 + 32 * half;  // key of this lane's column 0
    float mx = -INFINITY;
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int col = (c + skew) & 31;
      float s = srow[col] * scale;
      if (jh + col > jlast) s = -INFINITY;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);  // finite: every row sees key 0 in the first tile
    const float corr = expf(m - m_new);
    float sum = 0.0f;
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int col = (c + skew) & 31;
      float s = srow[col] * scale;
      if (jh + col > jlast) s = -INFINITY;
      const float p = expf(s - m_new);
      sum += p;
      prow[col] = __float2bfloat16(p);
      orow[col] *= corr;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);  // the same bits in both lanes
    l = l * corr + sum;
    m = m_new;
    __syncwarp();
    FragA pa[4];  // the warp's 16 queries x 64 keys
#pragma unroll
    for (int k = 0; k < 4; ++k) wmma::load_matrix_sync(pa[k], ps + wr * kLdh + 16 * k, kLdh);
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      FragAcc oacc;
      wmma::load_matrix_sync(oacc, os + wr * kLdf + 16 * n, kLdf, wmma::mem_row_major);
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // constant bounds keep pa[] in registers
        if (k >= n_lim) break;
        FragBRow vb;  // V: element (key, d) at vs[key * kLdh + d]
        wmma::load_matrix_sync(vb, vs + (16 * k) * kLdh + 16 * n, kLdh);
        wmma::mma_sync(oacc, pa[k], vb, oacc);
      }
      wmma::store_matrix_sync(os + wr * kLdf + 16 * n, oacc, kLdf, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (half == 0) {
    m_s[row] = m;
    l_s[row] = l;
  }
  __syncwarp();
  for (int rr = 0; rr < 16; ++rr) {
    const int orw = wr + rr;
    const int64_t i = i0 + orw;
    if (i >= T) break;
    const float inv = 1.0f / l_s[orw];
    float* o = out + (ti.b * T + i) * C + ti.h * kHS;
    o[lane] = os[orw * kLdf + lane] * inv;
    o[lane + 32] = os[orw * kLdf + lane + 32] * inv;
    if (lane == 0) lse[(ti.b * NH + ti.h) * T + i] = m_s[orw] + logf(l_s[orw]);
  }
}

// dK, dV. Block: 64 keys of one (b, h) (K, V as A fragments and dK, dV accumulators in
// registers); walks the query tiles from its diagonal to T. Per warp and query tile:
// S^T = K Q^T and dP^T = V dO^T (16 keys x 64 queries) to shared fp32; P^T and dS^T (bf16);
// dV += P^T dO, dK += dS^T Q.
__global__ void __launch_bounds__(kThreads, 2)
    DkDvBf16Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                   const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B,
                   int64_t T, int64_t C, int64_t NH, float scale, bool qkv_vec4, bool dout_vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem);  // (64 keys, kLdh)
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kTileH);  // (64 queries, kLdh)
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + 3 * kTileH);
  __nv_bfloat16* pt = reinterpret_cast<__nv_bfloat16*>(smem + 4 * kTileH);   // (64 keys, kLdh)
  __nv_bfloat16* dst = reinterpret_cast<__nv_bfloat16*>(smem + 5 * kTileH);  // (64 keys, kLdh)
  float* st = reinterpret_cast<float*>(smem + 6 * kTileH);                   // (64 keys, kLdf)
  float* dpt = reinterpret_cast<float*>(smem + 6 * kTileH + kTileF);         // (64 keys, kLdf)
  float* lse_s = reinterpret_cast<float*>(smem + 6 * kTileH + 2 * kTileF);   // (64 queries)
  float* d_s = lse_s + kTile;                                                // (64 queries)

  const TileIndex ti = BlockTile(B, NH);
  const int64_t j0 = ti.rank * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = 16 * warp;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;
  const float* dout_bh = dout + ti.b * T * C + ti.h * kHS;
  const float* lse_bh = lse + (ti.b * NH + ti.h) * T;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * kHS;  // D of query t at dbase[t*C3]

  TileRegs ar, br;
  FetchTile(ar, base + C, C3, j0, T, qkv_vec4);
  FetchTile(br, base + 2 * C, C3, j0, T, qkv_vec4);
  PutTile(ks, ar);
  PutTile(vs, br);
  // The first query tile starts at the block's first key.
  FetchTile(ar, base, C3, j0, T, qkv_vec4);
  FetchTile(br, dout_bh, C, j0, T, dout_vec4);
  float lse_r = FetchVec(lse_bh, 1, j0, T), d_r = FetchVec(dbase, C3, j0, T);
  __syncthreads();
  FragA ka[4], va[4];  // the warp's 16 keys x 64 dims
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    wmma::load_matrix_sync(ka[k], ks + wr * kLdh + 16 * k, kLdh);
    wmma::load_matrix_sync(va[k], vs + wr * kLdh + 16 * k, kLdh);
  }
  FragAcc dk[4], dv[4];  // the warp's 16 keys x 64 dims
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    wmma::fill_fragment(dk[n], 0.0f);
    wmma::fill_fragment(dv[n], 0.0f);
  }

  for (int64_t i0 = j0; i0 < T; i0 += kTile) {
    __syncthreads();  // every warp is done with the previous Q, dO, lse, D
    PutTile(qs, ar);
    PutTile(dos, br);
    if (threadIdx.x < kTile) {
      lse_s[threadIdx.x] = lse_r;
      d_s[threadIdx.x] = d_r;
    }
    __syncthreads();
    if (i0 + kTile < T) {
      FetchTile(ar, base, C3, i0 + kTile, T, qkv_vec4);
      FetchTile(br, dout_bh, C, i0 + kTile, T, dout_vec4);
      lse_r = FetchVec(lse_bh, 1, i0 + kTile, T);
      d_r = FetchVec(dbase, C3, i0 + kTile, T);
    }
    // On the diagonal tile, query sub-tiles n < warp lie before all of this warp's keys: skip
    // them (masked below whatever st, dpt hold; their p and ds are 0).
    const int n_first = i0 == j0 ? warp : 0;
    for (int n = n_first; n < 4; ++n) {
      FragAcc sacc, pacc;
      wmma::fill_fragment(sacc, 0.0f);
      wmma::fill_fragment(pacc, 0.0f);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        FragBCol qb, ob;  // Q^T, dO^T: element (d, query) at qs[query * kLdh + d]
        wmma::load_matrix_sync(qb, qs + (16 * n) * kLdh + 16 * k, kLdh);
        wmma::mma_sync(sacc, ka[k], qb, sacc);
        wmma::load_matrix_sync(ob, dos + (16 * n) * kLdh + 16 * k, kLdh);
        wmma::mma_sync(pacc, va[k], ob, pacc);
      }
      wmma::store_matrix_sync(st + wr * kLdf + 16 * n, sacc, kLdf, wmma::mem_row_major);
      wmma::store_matrix_sync(dpt + wr * kLdf + 16 * n, pacc, kLdf, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll 4
    for (int x = lane; x < 16 * kTile; x += 32) {
      const int row = wr + x / kTile, col = x % kTile;  // key row, query col
      const int64_t j = j0 + row, i = i0 + col;
      float p = 0.0f, ds = 0.0f;
      if (i < T && j <= i) {
        p = expf(st[row * kLdf + col] * scale - lse_s[col]);
        ds = p * (dpt[row * kLdf + col] - d_s[col]) * scale;
      }
      pt[row * kLdh + col] = __float2bfloat16(p);
      dst[row * kLdh + col] = __float2bfloat16(ds);
    }
    __syncwarp();
    for (int k = n_first; k < 4; ++k) {
      FragA pa, dsa;  // P^T, dS^T: the warp's 16 keys x queries 16k .. 16k+15
      wmma::load_matrix_sync(pa, pt + wr * kLdh + 16 * k, kLdh);
      wmma::load_matrix_sync(dsa, dst + wr * kLdh + 16 * k, kLdh);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        FragBRow ob, qb;  // dO, Q: element (query, d) at dos[query * kLdh + d]
        wmma::load_matrix_sync(ob, dos + (16 * k) * kLdh + 16 * n, kLdh);
        wmma::mma_sync(dv[n], pa, ob, dv[n]);
        wmma::load_matrix_sync(qb, qs + (16 * k) * kLdh + 16 * n, kLdh);
        wmma::mma_sync(dk[n], dsa, qb, dk[n]);
      }
    }
  }
  // The warp's rows of st, dpt are free (its last reads of them came before a __syncwarp).
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    wmma::store_matrix_sync(st + wr * kLdf + 16 * n, dk[n], kLdf, wmma::mem_row_major);
    wmma::store_matrix_sync(dpt + wr * kLdf + 16 * n, dv[n], kLdf, wmma::mem_row_major);
  }
  __syncwarp();
  for (int rr = 0; rr < 16; ++rr) {
    const int row = wr + rr;
    const int64_t j = j0 + row;
    if (j >= T) break;
    float* dkj = dbase + j * C3 + C;
    float* dvj = dbase + j * C3 + 2 * C;
    dkj[lane] = st[row * kLdf + lane];
    dkj[lane + 32] = st[row * kLdf + lane + 32];
    dvj[lane] = dpt[row * kLdf + lane];
    dvj[lane + 32] = dpt[row * kLdf + lane + 32];
  }
}

// dQ. Block: 64 queries of one (b, h) (Q, dO as A fragments and dQ accumulators in registers);
// walks the key tiles up to its diagonal. Per warp and key tile: S = Q K^T and dP = dO V^T
// (16 queries x 64 keys) to shared fp32; dS (bf16); dQ += dS K.
__global__ void __launch_bounds__(kThreads, 2)
    DqBf16Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                 const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B, int64_t T,
                 int64_t C, int64_t NH, float scale, bool qkv_vec4, bool dout_vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);  // (64 queries, kLdh)
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kTileH);  // (64 keys, kLdh)
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + 3 * kTileH);
  __nv_bfloat16* dsb = reinterpret_cast<__nv_bfloat16*>(smem + 4 * kTileH);  // (64 q, kLdh)
  float* ss = reinterpret_cast<float*>(smem + 5 * kTileH);                   // (64 q, kLdf)
  float* dps = reinterpret_cast<float*>(smem + 5 * kTileH + kTileF);         // (64 q, kLdf)
  float* lse_s = reinterpret_cast<float*>(smem + 5 * kTileH + 2 * kTileF);   // (64 queries)
  float* d_s = lse_s + kTile;                                                // (64 queries)

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + kTile - 1) / kTile;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * kTile;
  const int64_t i1 = Min64(T, i0 + kTile);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = 16 * warp;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * kHS;  // D of query t at dbase[t*C3]

  TileRegs ar, br;
  FetchTile(ar, base, C3, i0, T, qkv_vec4);
  FetchTile(br, dout + ti.b * T * C + ti.h * kHS, C, i0, T, dout_vec4);
  const float lse_r = FetchVec(lse + (ti.b * NH + ti.h) * T, 1, i0, T);
  const float d_r = FetchVec(dbase, C3, i0, T);
  PutTile(qs, ar);
  PutTile(dos, br);
  if (threadIdx.x < kTile) {
    lse_s[threadIdx.x] = lse_r;
    d_s[threadIdx.x] = d_r;
  }
  FetchTile(ar, base + C, C3, 0, T, qkv_vec4);
  FetchTile(br, base + 2 * C, C3, 0, T, qkv_vec4);
  __syncthreads();     // also: every D of the block's rows is read before dq overwrites them
  FragA qa[4], oa[4];  // the warp's 16 queries x 64 dims of Q and dO
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    wmma::load_matrix_sync(qa[k], qs + wr * kLdh + 16 * k, kLdh);
    wmma::load_matrix_sync(oa[k], dos + wr * kLdh + 16 * k, kLdh);
  }
  FragAcc dq[4];
#pragma unroll
  for (int n = 0; n < 4; ++n) wmma::fill_fragment(dq[n], 0.0f);

  for (int64_t j0 = 0; j0 < i1; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous K, V
    PutTile(ks, ar);
    PutTile(vs, br);
    __syncthreads();
    if (j0 + kTile < i1) {
      FetchTile(ar, base + C, C3, j0 + kTile, T, qkv_vec4);
      FetchTile(br, base + 2 * C, C3, j0 + kTile, T, qkv_vec4);
    }
    const int n_lim = j0 == i0 ? warp + 1 : 4;  // as in the forward kernel
    for (int n = 0; n < n_lim; ++n) {
      FragAcc sacc, pacc;
      wmma::fill_fragment(sacc, 0.0f);
      wmma::fill_fragment(pacc, 0.0f);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        FragBCol kb, vb;  // K^T, V^T: element (d, key) at ks[key * kLdh + d]
        wmma::load_matrix_sync(kb, ks + (16 * n) * kLdh + 16 * k, kLdh);
        wmma::mma_sync(sacc, qa[k], kb, sacc);
        wmma::load_matrix_sync(vb, vs + (16 * n) * kLdh + 16 * k, kLdh);
        wmma::mma_sync(pacc, oa[k], vb, pacc);
      }
      wmma::store_matrix_sync(ss + wr * kLdf + 16 * n, sacc, kLdf, wmma::mem_row_major);
      wmma::store_matrix_sync(dps + wr * kLdf + 16 * n, pacc, kLdf, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll 4
    for (int x = lane; x < 16 * kTile; x += 32) {
      const int row = wr + x / kTile, col = x % kTile;  // query row, key col
      const int64_t i = i0 + row, j = j0 + col;
      float ds = 0.0f;
      if (i < T && j <= i) {
        const float p = expf(ss[row * kLdf + col] * scale - lse_s[row]);
        ds = p * (dps[row * kLdf + col] - d_s[row]) * scale;
      }
      dsb[row * kLdh + col] = __float2bfloat16(ds);
    }
    __syncwarp();
    for (int k = 0; k < n_lim; ++k) {
      FragA dsa;  // dS: the warp's 16 queries x keys 16k .. 16k+15
      wmma::load_matrix_sync(dsa, dsb + wr * kLdh + 16 * k, kLdh);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        FragBRow kb;  // K: element (key, d) at ks[key * kLdh + d]
        wmma::load_matrix_sync(kb, ks + (16 * k) * kLdh + 16 * n, kLdh);
        wmma::mma_sync(dq[n], dsa, kb, dq[n]);
      }
    }
  }
  __syncwarp();  // the warp's reads of its ss rows are done
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    wmma::store_matrix_sync(ss + wr * kLdf + 16 * n, dq[n], kLdf, wmma::mem_row_major);
  }
  __syncwarp();
  for (int rr = 0; rr < 16; ++rr) {
    const int row = wr + rr;
    const int64_t i = i0 + row;
    if (i >= T) break;
    float* dqi = dbase + i * C3;
    dqi[lane] = ss[row * kLdf + lane];
    dqi[lane + 32] = ss[row * kLdf + lane + 32];
  }
}

}  // namespace tc
}  // namespace memtrain::core::cuda::attention_tiles

#endif  // MEMTRAIN_CORE_KERNELS_CUDA_ATTENTION_TILES_CUH_
