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
// FlashAttention-2 style: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with every
// fragment in registers. A block has 4 warps and a tile of 64 rows (queries, or keys for dK/dV);
// warp w owns rows 16w .. 16w+15 of it. The row-side operands (Q, or K and V, or Q and dO) are
// loaded once from global memory straight into A fragments; the tiles of the other side go
// through shared memory as bf16 (row-major and/or transposed, so that every B fragment is two
// 32-bit shared loads), guarded by __syncthreads. Scores, probabilities and accumulators stay in
// the C fragments; the online softmax reduces rows over the 4 lanes of a quad with xor
// shuffles. C fragments of S / P^T / dS convert in place into the A fragments of the next mma.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type",
// .bf16): lane = 4 * g + t (g = groupID = lane >> 2, t = threadID_in_group = lane & 3).
//   A (16 x 16, row): .b32 register r (r = 0..3) holds the pair (row g + 8 * (r & 1),
//     columns 2t + 8 * (r >> 1) + {0, 1}), the lower column in the low 16 bits.
//   B (16 x 8, col): register r (r = 0..1) holds (rows k = 2t + 8r + {0, 1}, column n = g).
//   C, D (16 x 8, f32): element e (e = 0..3) is (row g + 8 * (e >> 1), column 2t + (e & 1)).
// All of it is deterministic: fixed loop orders, no atomics; each output element is written by
// one thread.
namespace tc {

constexpr int kHS = 64;
constexpr int kTile = 64;         // rows of a block's tile and of each tile it walks
constexpr int kThreads = 128;     // 4 warps x 16 rows
constexpr int kFwdThreads = 256;  // forward: 8 warps x 16 queries
constexpr int kFwdRows = 128;     // forward: queries per block (key tiles of kTile)
// bf16 row stride (elements) of the shared tiles: 36 words, so the 8 rows g and 4 word offsets
// t of a B-fragment load hit 32 different banks; rows stay 16-byte aligned.
constexpr int kLdh = 72;
constexpr int kTileH = kTile * kLdh * sizeof(__nv_bfloat16);  // bytes of a bf16 tile: 9216
constexpr float kLog2e = 1.4426950408889634f;
static_assert(kTileH % 128 == 0);

constexpr int kFwdSmemBytes = 2 * kTileH;                   // K, V^T: 18432
constexpr int kDkDvSmemBytes = 4 * kTileH + 2 * kTile * 4;  // Q, Q^T, dO, dO^T, lse, D: 37376
constexpr int kDqSmemBytes = 3 * kTileH;                    // K, K^T, V: 27648

#if !defined(MEMTRAIN_ATTENTION_EMU)
// Two bf16 in one .b32 register (the host emulation defines its own).
using BfPair = uint32_t;
__device__ __forceinline__ BfPair PackPair(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low 16 bits
  return *reinterpret_cast<BfPair*>(&v);
}
// p is 4-byte aligned (an even element index of a 16-byte-aligned row).
__device__ __forceinline__ BfPair LoadPair(const __nv_bfloat16* p) {
  return *reinterpret_cast<const BfPair*>(p);
}
// d += a b (16 x 8 x 16), fp32 accumulation.
__device__ __forceinline__ void Mma(float (&d)[4], const BfPair (&a)[4], BfPair b0, BfPair b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ void StorePair(__nv_bfloat16* p, float lo, float hi) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(lo, hi);
}

// A (64, 64) fp32 tile on its way from global to shared memory. Thread item u (u = 0..3) is
// idx = threadIdx.x + 128u: the rows 2p, 2p+1 and the float4 column chunk c, with
// p = idx % 16 + 16 * (idx / 256), c = 2 * (idx / 32 % 8) + idx / 16 % 2; v[2u] is row 2p, v[2u+1]
// row 2p+1. A warp's load covers 16 row pairs x 32 contiguous bytes (full sectors), and the
// transposed stores of a warp hit 32 different banks.
template <int kNT = kThreads>  // threads of the block
struct TileRegs {
  static constexpr int kItems = 512 / kNT;
  float4 v[2 * kItems];
};
template <int kNT>
__device__ __forceinline__ void ItemPos(int u, int& p, int& c) {
  const int idx = threadIdx.x + kNT * u;
  p = idx % 16 + 16 * (idx / 256);
  c = 2 * (idx / 32 % 8) + idx / 16 % 2;
}

// Issues the loads of rows row0 .. row0+63 of src (64 floats each, row stride ld), zero for rows
// >= T. vec4: src and ld allow 16-byte loads.
template <int kNT>
__device__ __forceinline__ void FetchTile(TileRegs<kNT>& r, const float* src, int64_t ld,
                                          int64_t row0, int64_t T, bool vec4) {
#pragma unroll
  for (int u = 0; u < TileRegs<kNT>::kItems; ++u) {
    int p, c;
    ItemPos<kNT>(u, p, c);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t t = row0 + 2 * p + h;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (t < T) {
        const float* q = src + t * ld + 4 * c;
        x = vec4 ? *reinterpret_cast<const float4*>(q) : make_float4(q[0], q[1], q[2], q[3]);
      }
      r.v[2 * u + h] = x;
    }
  }
}

// dst (64 rows, kLdh) bf16 = the fetched tile, row-major (round to nearest even).
template <int kNT>
__device__ __forceinline__ void PutRows(__nv_bfloat16* dst, const TileRegs<kNT>& r) {
#pragma unroll
  for (int u = 0; u < TileRegs<kNT>::kItems; ++u) {
    int p, c;
    ItemPos<kNT>(u, p, c);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float4 x = r.v[2 * u + h];
      __nv_bfloat16* d = dst + (2 * p + h) * kLdh + 4 * c;
      StorePair(d, x.x, x.y);
      StorePair(d + 2, x.z, x.w);
    }
  }
}

// dst (64 dims, kLdh) bf16 = the fetched tile transposed: dst[d * kLdh + row] = tile[row][d].
template <int kNT>
__device__ __forceinline__ void PutCols(__nv_bfloat16* dst, const TileRegs<kNT>& r) {
#pragma unroll
  for (int u = 0; u < TileRegs<kNT>::kItems; ++u) {
    int p, c;
    ItemPos<kNT>(u, p, c);
    const float4 a = r.v[2 * u], b = r.v[2 * u + 1];
    __nv_bfloat16* d = dst + (4 * c) * kLdh + 2 * p;
    StorePair(d, a.x, b.x);
    StorePair(d + kLdh, a.y, b.y);
    StorePair(d + 2 * kLdh, a.z, b.z);
    StorePair(d + 3 * kLdh, a.w, b.w);
  }
}

// A fragments (16 rows x 64 dims, 4 k-chunks) of rows ra (fragment rows 0..7) and ra + 8 of src
// (row stride ld, dims 0..63), zero for rows >= T; loaded once per block straight from global.
__device__ __forceinline__ void LoadRowFrags(BfPair (&a)[4][4], const float* src, int64_t ld,
                                             int64_t ra, int64_t T) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t row = ra + 8 * (r & 1);
      const int col = 16 * kk + 8 * (r >> 1) + 2 * t;
      float x0 = 0.0f, x1 = 0.0f;
      if (row < T) {
        x0 = src[row * ld + col];
        x1 = src[row * ld + col + 1];
      }
      a[kk][r] = PackPair(x0, x1);
    }
  }
}

// acc (16 rows x 8 n-tiles of 8 columns) += A (16 x 16 k-chunk) times the B operand whose
// column n is row (8 * n_tile + g) of sh (k contiguous at sh + row * kLdh + k0).
__device__ __forceinline__ void MmaRowTile(float (&acc)[4], const BfPair (&a)[4],
                                           const __nv_bfloat16* sh, int row, int k0) {
  const int t = threadIdx.x % 4;
  const __nv_bfloat16* p = sh + row * kLdh + k0 + 2 * t;
  Mma(acc, a, LoadPair(p), LoadPair(p + 8));
}

// Forward. Block: 128 queries of one (b, h) (8 warps); key tiles of 64, prefetched into registers
// while the block computes on the current one. Per warp and key tile: S = Q K^T (16 x 64) in C
// fragments, online softmax (m, l per row; scores kept unscaled, exp2 with scale * log2 e), P
// as bf16 A fragments, O += P V with V^T in shared memory.
__global__ void __launch_bounds__(kFwdThreads, 1)
    ForwardBf16Kernel(float* __restrict__ out, float* __restrict__ lse,
                      const float* __restrict__ qkv, int64_t B, int64_t T, int64_t C, int64_t NH,
                      float scale, bool vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem);           // (64 keys, kLdh)
  __nv_bfloat16* vt = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);  // (64 dims, kLdh)

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + kFwdRows - 1) / kFwdRows;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * kFwdRows;  // rank 0: the last queries
  const int64_t i1 = Min64(T, i0 + kFwdRows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;
  const int64_t ra = i0 + 16 * warp + g;  // this thread's rows: ra (e < 2) and ra + 8 (e >= 2)
  // The last key each row sees; rows past T mirror row T-1 (finite max) and are never written.
  const int64_t jl[2] = {Min64(ra, T - 1), Min64(ra + 8, T - 1)};
  const float sl2 = scale * kLog2e;

  TileRegs<kFwdThreads> kr, vr;
  FetchTile(kr, base + C, C3, 0, T, vec4);
  FetchTile(vr, base + 2 * C, C3, 0, T, vec4);
  BfPair qa[4][4];
  LoadRowFrags(qa, base, C3, ra, T);
  float o[8][4];
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this lane's partial sums

  for (int64_t j0 = 0; j0 < i1; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous K, V
    PutRows(ks, kr);
    PutCols(vt, vr);
    __syncthreads();
    if (j0 + kTile < i1) {
      FetchTile(kr, base + C, C3, j0 + kTile, T, vec4);
      FetchTile(vr, base + 2 * C, C3, j0 + kTile, T, vec4);
    }
    // Tiles with j0 + 64 > i0 (the last two) hold masked keys (incl. keys >= T). Key n-tiles
    // with j0 + 8n > i0 + 16 warp + 15 lie after all of this warp's queries: n_lim (0..8) is
    // the number of n-tiles the warp needs.
    const bool diag = j0 + kTile > i0;
    const int64_t span = i0 + 16 * warp + 15 - j0;  // the warp's last query minus j0
    const int n_lim = span < 0 ? 0 : span >= 63 ? 8 : static_cast<int>(span / 8) + 1;
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
      if (n < n_lim) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) MmaRowTile(s[n], qa[kk], ks, 8 * n + g, 16 * kk);
      }
    }
    if (diag) {
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (j0 + 8 * n + 2 * t + (e & 1) > jl[e >> 1]) s[n][e] = -INFINITY;
        }
      }
    }
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
    }
    float corr[2], mb[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      // mx is finite: every row sees key 0 in the first tile. exp2(-inf) = 0 there.
      corr[r] = exp2f((m[r] - mx[r]) * sl2);
      m[r] = mx[r];
      mb[r] = mx[r] * sl2;
      l[r] *= corr[r];
    }
    BfPair pa[4][4];  // P (16 queries x 64 keys) as A fragments: k-chunk kk = n-tiles 2kk, 2kk+1
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const float p0 = exp2f(s[n][0] * sl2 - mb[0]), p1 = exp2f(s[n][1] * sl2 - mb[0]);
      const float p2 = exp2f(s[n][2] * sl2 - mb[1]), p3 = exp2f(s[n][3] * sl2 - mb[1]);
      l[0] += p0 + p1;
      l[1] += p2 + p3;
      pa[n / 2][2 * (n % 2)] = PackPair(p0, p1);
      pa[n / 2][2 * (n % 2) + 1] = PackPair(p2, p3);
    }
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (2 * kk < n_lim) {
#pragma unroll
        for (int n = 0; n < 8; ++n) MmaRowTile(o[n], pa[kk], vt, 8 * n + g, 16 * kk);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // both xor steps add the same two values in both lanes
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = ra + 8 * r;
    if (i >= T) continue;
    const float inv = 1.0f / l[r];
    float* orow = out + (ti.b * T + i) * C + ti.h * kHS + 2 * t;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      orow[8 * n] = o[n][2 * r] * inv;
      orow[8 * n + 1] = o[n][2 * r + 1] * inv;
    }
    if (t == 0) lse[(ti.b * NH + ti.h) * T + i] = m[r] * scale + logf(l[r]);
  }
}

// dK, dV. Block: 64 keys of one (b, h) (K, V as A fragments, dK, dV accumulators in registers);
// walks the query tiles from its diagonal to T (Q, dO row-major and transposed in shared
// memory). Per warp and 32 queries: S^T = K Q^T, dP^T = V dO^T (16 keys x 32 queries);
// P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - D) scale as A fragments; dV += P^T dO,
// dK += dS^T Q.
__global__ void __launch_bounds__(kThreads, 2)
    DkDvBf16Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                   const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B,
                   int64_t T, int64_t C, int64_t NH, float scale, bool qkv_vec4, bool dout_vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* qs = reinterpret_cast<__nv_bfloat16*>(smem);                // (64 queries, kLdh)
  __nv_bfloat16* qt = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);       // (64 dims, kLdh)
  __nv_bfloat16* dos = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kTileH);  // (64 queries, kLdh)
  __nv_bfloat16* dot = reinterpret_cast<__nv_bfloat16*>(smem + 3 * kTileH);  // (64 dims, kLdh)
  float* lse_s = reinterpret_cast<float*>(smem + 4 * kTileH);                // (64) lse * log2 e
  float* d_s = lse_s + kTile;                                                // (64) D

  const TileIndex ti = BlockTile(B, NH);
  const int64_t j0 = ti.rank * kTile;  // rank 0: the first keys, seen by every query
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;
  const float* dout_bh = dout + ti.b * T * C + ti.h * kHS;
  const float* lse_bh = lse + (ti.b * NH + ti.h) * T;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * kHS;  // D of query t at dbase[t*C3]
  const int64_t ja = j0 + 16 * warp + g;             // this thread's keys: ja and ja + 8
  const float sl2 = scale * kLog2e;

  TileRegs<> qr, dr;
  FetchTile(qr, base, C3, j0, T, qkv_vec4);  // the first query tile starts at the first key
  FetchTile(dr, dout_bh, C, j0, T, dout_vec4);
  BfPair ka[4][4], va[4][4];
  LoadRowFrags(ka, base + C, C3, ja, T);
  LoadRowFrags(va, base + 2 * C, C3, ja, T);
  float dk[8][4], dv[8][4];
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
  }

  for (int64_t i0 = j0; i0 < T; i0 += kTile) {
    __syncthreads();  // every warp is done with the previous Q, dO, lse, D
    PutRows(qs, qr);
    PutCols(qt, qr);
    PutRows(dos, dr);
    PutCols(dot, dr);
    if (threadIdx.x < kTile) {
      const int64_t i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < T ? lse_bh[i] * kLog2e : 0.0f;
      d_s[threadIdx.x] = i < T ? dbase[i * C3] : 0.0f;
    }
    __syncthreads();
    if (i0 + kTile < T) {
      FetchTile(qr, base, C3, i0 + kTile, T, qkv_vec4);
      FetchTile(dr, dout_bh, C, i0 + kTile, T, dout_vec4);
    }
    const bool diag = i0 == j0;
#pragma unroll
    for (int hq = 0; hq < 2; ++hq) {
      // On the diagonal, queries 0..31 lie before all keys of warps 2 and 3.
      if (diag && hq == 0 && warp >= 2) continue;
      float st[4][4], dpt[4][4];
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nn][e] = dpt[nn][e] = 0.0f;
        const int qrow = 32 * hq + 8 * nn + g;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          MmaRowTile(st[nn], ka[kk], qs, qrow, 16 * kk);
          MmaRowTile(dpt[nn], va[kk], dos, qrow, 16 * kk);
        }
      }
      BfPair pa[2][4], dsa[2][4];  // P^T, dS^T (16 keys x 32 queries) as A fragments
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
        float p[4], ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int q = 32 * hq + 8 * nn + 2 * t + (e & 1);  // query within the tile
          const int64_t i = i0 + q, j = ja + 8 * (e >> 1);
          const float pe = exp2f(st[nn][e] * sl2 - lse_s[q]);
          const bool ok = i < T && j <= i;
          p[e] = ok ? pe : 0.0f;
          ds[e] = ok ? pe * (dpt[nn][e] - d_s[q]) * scale : 0.0f;
        }
        pa[nn / 2][2 * (nn % 2)] = PackPair(p[0], p[1]);
        pa[nn / 2][2 * (nn % 2) + 1] = PackPair(p[2], p[3]);
        dsa[nn / 2][2 * (nn % 2)] = PackPair(ds[0], ds[1]);
        dsa[nn / 2][2 * (nn % 2) + 1] = PackPair(ds[2], ds[3]);
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          MmaRowTile(dv[n], pa[kk], dot, 8 * n + g, 32 * hq + 16 * kk);
          MmaRowTile(dk[n], dsa[kk], qt, 8 * n + g, 32 * hq + 16 * kk);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = ja + 8 * r;
    if (j >= T) continue;
    float* dkj = dbase + j * C3 + C + 2 * t;
    float* dvj = dbase + j * C3 + 2 * C + 2 * t;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      dkj[8 * n] = dk[n][2 * r];
      dkj[8 * n + 1] = dk[n][2 * r + 1];
      dvj[8 * n] = dv[n][2 * r];
      dvj[8 * n + 1] = dv[n][2 * r + 1];
    }
  }
}

// dQ. Block: 64 queries of one (b, h) (Q, dO as A fragments, dQ accumulators, lse and D in
// registers); walks the key tiles up to its diagonal (K, K^T, V in shared memory). Per warp and
// 32 keys: S = Q K^T, dP = dO V^T; dS = P (dP - D) scale as A fragments; dQ += dS K.
__global__ void __launch_bounds__(kThreads, 2)
    DqBf16Kernel(float* __restrict__ dqkv, const float* __restrict__ dout,
                 const float* __restrict__ qkv, const float* __restrict__ lse, int64_t B, int64_t T,
                 int64_t C, int64_t NH, float scale, bool qkv_vec4, bool dout_vec4) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(smem);               // (64 keys, kLdh)
  __nv_bfloat16* kt = reinterpret_cast<__nv_bfloat16*>(smem + kTileH);      // (64 dims, kLdh)
  __nv_bfloat16* vs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * kTileH);  // (64 keys, kLdh)

  const TileIndex ti = BlockTile(B, NH);
  const int64_t n_tiles = (T + kTile - 1) / kTile;
  const int64_t i0 = (n_tiles - 1 - ti.rank) * kTile;
  const int64_t i1 = Min64(T, i0 + kTile);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t C3 = 3 * C;
  const float* base = qkv + ti.b * T * C3 + ti.h * kHS;
  float* dbase = dqkv + ti.b * T * C3 + ti.h * kHS;  // D of query t at dbase[t*C3]
  const int64_t ra = i0 + 16 * warp + g;             // this thread's rows: ra and ra + 8
  const float sl2 = scale * kLog2e;

  TileRegs<> kr, vr;
  FetchTile(kr, base + C, C3, 0, T, qkv_vec4);
  FetchTile(vr, base + 2 * C, C3, 0, T, qkv_vec4);
  BfPair qa[4][4], oa[4][4];
  LoadRowFrags(qa, base, C3, ra, T);
  LoadRowFrags(oa, dout + ti.b * T * C + ti.h * kHS, C, ra, T);
  float lse2[2], dd[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = ra + 8 * r;
    lse2[r] = i < T ? lse[(ti.b * NH + ti.h) * T + i] * kLog2e : 0.0f;
    dd[r] = i < T ? dbase[i * C3] : 0.0f;  // read before any thread writes dq (the loop syncs)
  }
  float dq[8][4];
#pragma unroll
  for (int n = 0; n < 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] = 0.0f;
  }

  for (int64_t j0 = 0; j0 < i1; j0 += kTile) {
    __syncthreads();  // every warp is done with the previous K, V
    PutRows(ks, kr);
    PutCols(kt, kr);
    PutRows(vs, vr);
    __syncthreads();
    if (j0 + kTile < i1) {
      FetchTile(kr, base + C, C3, j0 + kTile, T, qkv_vec4);
      FetchTile(vr, base + 2 * C, C3, j0 + kTile, T, qkv_vec4);
    }
    const bool diag = j0 == i0;
#pragma unroll
    for (int hk = 0; hk < 2; ++hk) {
      // On the diagonal, keys 32..63 lie after all queries of warps 0 and 1.
      if (diag && hk == 1 && warp < 2) continue;
      float s[4][4], dp[4][4];
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nn][e] = dp[nn][e] = 0.0f;
        const int krow = 32 * hk + 8 * nn + g;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          MmaRowTile(s[nn], qa[kk], ks, krow, 16 * kk);
          MmaRowTile(dp[nn], oa[kk], vs, krow, 16 * kk);
        }
      }
      BfPair dsa[2][4];  // dS (16 queries x 32 keys) as A fragments
#pragma unroll
      for (int nn = 0; nn < 4; ++nn) {
        float ds[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = ra + 8 * (e >> 1);
          const int64_t j = j0 + 32 * hk + 8 * nn + 2 * t + (e & 1);
          const float pe = exp2f(s[nn][e] * sl2 - lse2[e >> 1]);
          ds[e] = (i < T && j <= i) ? pe * (dp[nn][e] - dd[e >> 1]) * scale : 0.0f;
        }
        dsa[nn / 2][2 * (nn % 2)] = PackPair(ds[0], ds[1]);
        dsa[nn / 2][2 * (nn % 2) + 1] = PackPair(ds[2], ds[3]);
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
        for (int n = 0; n < 8; ++n) MmaRowTile(dq[n], dsa[kk], kt, 8 * n + g, 32 * hk + 16 * kk);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = ra + 8 * r;
    if (i >= T) continue;
    float* dqi = dbase + i * C3 + 2 * t;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      dqi[8 * n] = dq[n][2 * r];
      dqi[8 * n + 1] = dq[n][2 * r + 1];
    }
  }
}

}  // namespace tc
}  // namespace memtrain::core::cuda::attention_tiles

#endif  // MEMTRAIN_CORE_KERNELS_CUDA_ATTENTION_TILES_CUH_
