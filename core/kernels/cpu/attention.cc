// Causal attention with an online softmax (FlashAttention-2 style) on the CPU, its tiles mapped
// onto register-blocked matrix products.
//
// Tiles: queries and keys of one (batch, head) in tiles of kTile = 96 rows. A task copies the
// tiles it needs out of the strided qkv / dout rows into contiguous, zero-padded buffers (q and
// dout also transposed), so every product is C (+)= A·B on contiguous operands, computed by one
// micro-kernel: 6 rows x 16 columns of C in 12 AVX2 registers, per step a broadcast element of A
// times a row of B (a portable loop where AVX2 + FMA are missing). Small-tile cblas_sgemm calls
// were slower here: OpenBLAS packs both operands on every call. Scores are kept transposed,
// s[key][query], so the softmax statistics of a tile's queries are vector operations; they are
// in log2 units (q is scaled by log2(e)/sqrt(HS) when packed) and exponentials are FastExp2.
// kGroup = 4 query tiles share one sweep over the key tiles, so each key tile is copied out of
// the strided rows (one 4 KiB page per row once C is large: TLB misses dominate the copy) once
// per group; the rows of the next tile are prefetched a few at a time during the products.
// Memory per task: O(kGroup * kTile * HS + kTile^2) floats whatever T is; T x T is never
// materialised.
//
// Forward: a task per (batch, head, group of up to kGroup query tiles; fewer when there are few
// tasks per thread), longest first, walks the key tiles up to the diagonal: sᵀ = K·Qᵀ, running
// max m and sum l per query (rescaling the accumulated output when the max grows), O += P·V. It
// saves lse = m + log(l) (natural log units) per query.
//
// Backward: recomputes P = exp2(s - lse) from q, k and lse; D_i = dout_i . out_i; per (query
// tile, key tile) pair dPᵀ = V·dOᵀ, dS = P (dP - D) / sqrt(HS), then dV += Pᵀ·dO, dK += dSᵀ·Q,
// dQ += dS·K. No atomics; one of two schedules, chosen by the number of (batch, head) pairs per
// thread:
//  - per head (enough pairs to keep every thread busy): a task per (batch, head) walks groups of
//    query tiles outer, key tiles inner: 5 products per pair; dk, dv accumulate in dqkv (owned by
//    the task), dq in the task's buffers.
//  - per tile (few pairs: a long sequence with few heads, e.g. a sequence-parallel shard): pass 1
//    has a task per key tile (dk, dv), pass 2 a task per query tile (dq); s, P and dP are
//    computed in both (7 products per pair).
// Both run every product on the same tiles, in the same order, with the same code, so the
// results are bit-identical whichever is taken: they do not depend on the thread count.
// In a diagonal tile the kernels skip the blocks and the k ranges that the causal mask zeroes.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/kernels/cpu/ops.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MEMTRAIN_ATTENTION_AVX2 1
#endif

namespace memtrain::core::cpu {
namespace {

constexpr int64_t kTile = 96;  // a multiple of 48: the micro-kernel's 6 rows and 16 columns
static_assert(kTile % 48 == 0);
// Query tiles that share one sweep over the key tiles (the forward task, the backward's task per
// head): each key tile is copied out of the strided rows once per group, not once per tile.
constexpr int64_t kGroup = 4;
constexpr int64_t kRows = 6;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 2^x with a relative error of about 2e-7 (Cephes' exp2f polynomial on [-0.5, 0.5]); x <= -127,
// -inf included, gives exactly 0. Plain arithmetic, so `#pragma omp simd` loops vectorise it.
inline float FastExp2(float x) {
  x = x < -127.0f ? -127.0f : x;
  x = x > 127.0f ? 127.0f : x;
  const float t = x + 12582912.0f;  // 1.5 * 2^23: x rounded to an integer in t's low bits
  const float n = t - 12582912.0f;
  const float f = x - n;  // [-0.5, 0.5]
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (std::bit_cast<int32_t>(t) - 0x4B400000 + 127) << 23;  // 2^n, 0 at -127
  return p * std::bit_cast<float>(bits);
}

#ifdef MEMTRAIN_ATTENTION_AVX2
// FastExp2 on 8 lanes (the same polynomial; max/min for the clamps).
inline __m256 Exp2(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
  x = _mm256_min_ps(x, _mm256_set1_ps(127.0f));
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 t = _mm256_add_ps(x, magic);
  const __m256 f = _mm256_sub_ps(x, _mm256_sub_ps(t, magic));
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000 - 127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

// ---- the softmax stages on a transposed score tile s[key][query] (kTile x kTile) -------------

// mx[q] = max(mx[q], max over keys of s[.][q]). Walks the rows in strips of 48 queries (6
// vectors), the strip's maxima in registers.
void ColumnMax(const float* s, float* mx) {
#ifdef MEMTRAIN_ATTENTION_AVX2
  for (int64_t q0 = 0; q0 < kTile; q0 += 48) {
    __m256 a[6];
    for (int v = 0; v < 6; ++v) a[v] = _mm256_loadu_ps(mx + q0 + 8 * v);
    for (int64_t n = 0; n < kTile; ++n) {
      const float* sn = s + n * kTile + q0;
      for (int v = 0; v < 6; ++v) a[v] = _mm256_max_ps(a[v], _mm256_loadu_ps(sn + 8 * v));
    }
    for (int v = 0; v < 6; ++v) _mm256_storeu_ps(mx + q0 + 8 * v, a[v]);
  }
#else
  for (int64_t n = 0; n < kTile; ++n) {
#pragma omp simd
    for (int64_t q = 0; q < kTile; ++q) mx[q] = std::max(mx[q], s[n * kTile + q]);
  }
#endif
}

// s = exp2(s - mx[q]) in place; l[q] += the sum over keys. Strips of 48 queries, the sums in
// registers.
void ExpAndColumnSum(float* s, const float* mx, float* l) {
#ifdef MEMTRAIN_ATTENTION_AVX2
  for (int64_t q0 = 0; q0 < kTile; q0 += 48) {
    __m256 sum[6];
    for (int v = 0; v < 6; ++v) sum[v] = _mm256_loadu_ps(l + q0 + 8 * v);
    for (int64_t n = 0; n < kTile; ++n) {
      float* sn = s + n * kTile + q0;
      for (int v = 0; v < 6; ++v) {
        const __m256 p =
            Exp2(_mm256_sub_ps(_mm256_loadu_ps(sn + 8 * v), _mm256_loadu_ps(mx + q0 + 8 * v)));
        _mm256_storeu_ps(sn + 8 * v, p);
        sum[v] = _mm256_add_ps(sum[v], p);
      }
    }
    for (int v = 0; v < 6; ++v) _mm256_storeu_ps(l + q0 + 8 * v, sum[v]);
  }
#else
  for (int64_t n = 0; n < kTile; ++n) {
    float* sn = s + n * kTile;
#pragma omp simd
    for (int64_t q = 0; q < kTile; ++q) {
      const float p = FastExp2(sn[q] - mx[q]);
      sn[q] = p;
      l[q] += p;
    }
  }
#endif
}

// s = P = exp2(s - lse2[q]); dp = dS = P (dp - D[q]) scale.
void ProbabilitiesAndGrads(float* s, float* dp, const float* lse2, const float* D, float scale) {
#ifdef MEMTRAIN_ATTENTION_AVX2
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t n = 0; n < kTile; ++n) {
    for (int64_t q = 0; q < kTile; q += 8) {
      float* sp = s + n * kTile + q;
      float* dpp = dp + n * kTile + q;
      const __m256 p = Exp2(_mm256_sub_ps(_mm256_loadu_ps(sp), _mm256_loadu_ps(lse2 + q)));
      _mm256_storeu_ps(sp, p);
      const __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dpp), _mm256_loadu_ps(D + q));
      _mm256_storeu_ps(dpp, _mm256_mul_ps(_mm256_mul_ps(p, g), sc));
    }
  }
#else
  for (int64_t n = 0; n < kTile; ++n) {
    float* sn = s + n * kTile;
    float* dpn = dp + n * kTile;
#pragma omp simd
    for (int64_t q = 0; q < kTile; ++q) {
      const float p = FastExp2(sn[q] - lse2[q]);
      sn[q] = p;
      dpn[q] = p * (dpn[q] - D[q]) * scale;
    }
  }
#endif
}

// The strided q, k, v, dout (and dqkv) rows the next tile pair will copy, brought into the cache
// while this pair computes, a few rows after each micro-kernel call: issued all at once (up to
// 1536 lines) they left most of the copies' cache misses in place (measured).
class RowPrefetcher {
 public:
  // Starts a new list of rows, each HS floats, `per_step` of them prefetched per Step().
  void Reset(int64_t HS, int64_t per_step) {
    HS_ = HS;
    per_step_ = per_step;
    sets_ = set_ = row_ = 0;
  }
  // Appends n rows at src, src + stride, ... (at most kSets sets between resets).
  void Add(const float* src, int64_t stride, int64_t n) {
    if (n <= 0 || sets_ == kSets) return;
    src_[sets_] = src;
    stride_[sets_] = stride;
    n_[sets_] = n;
    ++sets_;
  }
  // Prefetches the next rows of the list.
  void Step() {
    for (int64_t rows = per_step_; rows > 0 && set_ < sets_; --rows) {
      const float* p = src_[set_] + row_ * stride_[set_];
      for (int64_t d = 0; d < HS_; d += 16) __builtin_prefetch(p + d);
      if (++row_ == n_[set_]) {
        ++set_;
        row_ = 0;
      }
    }
  }

 private:
  static constexpr int kSets = 8;
  const float* src_[kSets];
  int64_t stride_[kSets], n_[kSets];
  int64_t HS_ = 0, per_step_ = 1, sets_ = 0, set_ = 0, row_ = 0;
};

// ---- micro-kernel and tile products ---------------------------------------------------------

// C[r][x] (+)= sum over k in [k0, k1) of A(r, k) B[k][x] for r < 6, x < 8 * NV, where
// A(r, k) = a[r * lda + k], or a[k * lda + r] when kColA; B and C row-major.
template <int NV, bool kColA, bool kAcc>
inline void MicroKernel(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t k0, int64_t k1) {
#ifdef MEMTRAIN_ATTENTION_AVX2
  __m256 acc[kRows][NV];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = kAcc ? _mm256_loadu_ps(c + r * ldc + 8 * v) : _mm256_setzero_ps();
    }
  }
  const float* ap = kColA ? a + k0 * lda : a + k0;
  const float* bp = b + k0 * ldb;
  for (int64_t k = k0; k < k1; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(bp + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      const __m256 ar = _mm256_broadcast_ss(kColA ? ap + r : ap + r * lda);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(ar, bv[v], acc[r][v]);
    }
    ap += kColA ? lda : 1;
    bp += ldb;
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + r * ldc + 8 * v, acc[r][v]);
  }
#else
  constexpr int kW = 8 * NV;
  float acc[kRows][kW];
  for (int r = 0; r < kRows; ++r) {
    for (int x = 0; x < kW; ++x) acc[r][x] = kAcc ? c[r * ldc + x] : 0.0f;
  }
  for (int64_t k = k0; k < k1; ++k) {
    const float* bk = b + k * ldb;
    for (int r = 0; r < kRows; ++r) {
      const float ar = kColA ? a[k * lda + r] : a[r * lda + k];
#pragma omp simd
      for (int x = 0; x < kW; ++x) acc[r][x] += ar * bk[x];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int x = 0; x < kW; ++x) c[r * ldc + x] = acc[r][x];
  }
#endif
}

// C (R x X) (+)= A (R x K) · B (K x X), R a multiple of 6, X a multiple of 8, in blocks of
// 6 x 16 (and 6 x 8 for the last 8 columns). range(r0, x0, width) gives the k interval
// [k0, k1) that block needs (all of K, or less where the causal mask zeroes A). pf steps once
// per block.
template <bool kColA, bool kAcc, typename Range>
void TileProduct(int64_t R, int64_t X, const float* a, int64_t lda, const float* b, int64_t ldb,
                 float* c, int64_t ldc, Range range, RowPrefetcher* pf) {
  int64_t x0 = 0;
  for (; x0 + 16 <= X; x0 += 16) {
    for (int64_t r0 = 0; r0 < R; r0 += kRows) {
      const auto [k0, k1] = range(r0, x0, int64_t{16});
      const float* ar = kColA ? a + r0 : a + r0 * lda;
      MicroKernel<2, kColA, kAcc>(ar, lda, b + x0, ldb, c + r0 * ldc + x0, ldc, k0, k1);
      pf->Step();
    }
  }
  if (x0 < X) {
    for (int64_t r0 = 0; r0 < R; r0 += kRows) {
      const auto [k0, k1] = range(r0, x0, int64_t{8});
      const float* ar = kColA ? a + r0 : a + r0 * lda;
      MicroKernel<1, kColA, kAcc>(ar, lda, b + x0, ldb, c + r0 * ldc + x0, ldc, k0, k1);
      pf->Step();
    }
  }
}

struct KInterval {
  int64_t k0, k1;
};

// ---- per-task buffers -----------------------------------------------------------------------

// Zeroed, 64-byte aligned scratch carved into named buffers.
class Scratch {
 public:
  explicit Scratch(int64_t floats)
      : data_(static_cast<float*>(std::aligned_alloc(64, Round(floats) * sizeof(float)))) {
    std::memset(data_.get(), 0, Round(floats) * sizeof(float));
  }
  float* Take(int64_t floats) {
    float* p = data_.get() + used_;
    used_ += Round(floats);
    return p;
  }
  static int64_t Round(int64_t floats) { return (floats + 15) / 16 * 16; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  int64_t used_ = 0;
};

// dst[0, n) = src[0, n), inline (a row is short: a library call per row costs more than it).
inline void CopyRow(float* dst, const float* src, int64_t n) {
  int64_t d = 0;
#ifdef MEMTRAIN_ATTENTION_AVX2
  for (; d + 8 <= n; d += 8) _mm256_storeu_ps(dst + d, _mm256_loadu_ps(src + d));
#endif
  for (; d < n; ++d) dst[d] = src[d];
}

// dst (kTile x ld) = rows of src (stride `stride`, n of them, HS wide); the rest zero.
void PackRows(float* dst, int64_t ld, const float* src, int64_t stride, int64_t n, int64_t HS) {
  for (int64_t r = 0; r < kTile; ++r) {
    float* d = dst + r * ld;
    if (r < n) {
      CopyRow(d, src + r * stride, HS);
      std::fill(d + HS, d + ld, 0.0f);
    } else {
      std::fill(d, d + ld, 0.0f);
    }
  }
}

// dst (HS x kTile) = the transpose of n rows of src (stride `stride`) times `mul`; the rest zero.
void PackTransposed(float* dst, const float* src, int64_t stride, int64_t n, int64_t HS,
                    float mul) {
  int64_t r0 = 0;
#ifdef MEMTRAIN_ATTENTION_AVX2
  // 8 x 8 blocks through registers.
  const __m256 vm = _mm256_set1_ps(mul);
  for (; r0 + 8 <= n; r0 += 8) {
    int64_t d0 = 0;
    for (; d0 + 8 <= HS; d0 += 8) {
      const float* sp = src + r0 * stride + d0;
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(sp + i * stride);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      float* dp = dst + d0 * kTile + r0;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dp + i * kTile,
                         _mm256_mul_ps(_mm256_permute2f128_ps(r[i], r[i + 4], 0x20), vm));
        _mm256_storeu_ps(dp + (i + 4) * kTile,
                         _mm256_mul_ps(_mm256_permute2f128_ps(r[i], r[i + 4], 0x31), vm));
      }
    }
    for (; d0 < HS; ++d0) {
      for (int64_t r = r0; r < r0 + 8; ++r) dst[d0 * kTile + r] = src[r * stride + d0] * mul;
    }
  }
#endif
  for (int64_t r = r0; r < n; ++r) {
    for (int64_t d = 0; d < HS; ++d) dst[d * kTile + r] = src[r * stride + d] * mul;
  }
  for (int64_t d = 0; d < HS; ++d) std::fill(dst + d * kTile + n, dst + (d + 1) * kTile, 0.0f);
}

// The geometry of one (batch, head).
struct Head {
  int64_t T, C, HS, HP;  // HP: HS rounded up to 8 (the padded row length of the buffers)
  const float* q;        // row t of q (then k at +C, v at +2C) at q + t * 3C
  float qmul;            // log2(e) / sqrt(HS): scores come out in log2 units
  float scale;           // 1 / sqrt(HS)
};

Head MakeHead(const float* qkv, int64_t b, int64_t h, int64_t T, int64_t C, int64_t NH) {
  Head g;
  g.T = T;
  g.C = C;
  g.HS = C / NH;
  g.HP = (g.HS + 7) / 8 * 8;
  g.q = qkv + b * T * 3 * C + h * g.HS;
  g.scale = 1.0f / std::sqrt(static_cast<float>(g.HS));
  g.qmul = kLog2e * g.scale;
  return g;
}

// sᵀ (kTile keys x kTile queries) = K·Qᵀ; qt is Qᵀ pre-scaled to log2 units. In a diagonal tile
// (key tile == query tile) blocks of keys all after their queries are skipped and every key
// after its query is set to -inf.
void Scores(float* s, const float* k, const float* qt, const Head& g, bool diag,
            RowPrefetcher* pf) {
  TileProduct<false, false>(
      kTile, kTile, k, g.HP, qt, kTile, s, kTile,
      [&](int64_t r0, int64_t x0, int64_t w) {
        return diag && r0 > x0 + w - 1 ? KInterval{0, 0} : KInterval{0, g.HS};
      },
      pf);
  if (diag) {
    for (int64_t n = 1; n < kTile; ++n) std::fill(s + n * kTile, s + n * kTile + n, kNegInf);
  }
}

// The backward pass's per-task buffers: the key side of one key tile, the query side of up to
// kGroup query tiles, and the transposed score tiles of the pair in hand.
struct QuerySide {
  float *qp, *qt, *dop, *dot, *lse2, *D, *dq;  // q rows, qᵀ scaled, dout rows, doutᵀ, dq rows
};

struct BackwardTask {
  explicit BackwardTask(const Head& g) : scratch(Footprint(g)) {
    kp = scratch.Take(kTile * g.HP);
    vp = scratch.Take(kTile * g.HP);
    dk = scratch.Take(kTile * g.HP);
    dv = scratch.Take(kTile * g.HP);
    s = scratch.Take(kTile * kTile);
    dp = scratch.Take(kTile * kTile);
    for (QuerySide& q : qs) {
      q.qp = scratch.Take(kTile * g.HP);
      q.qt = scratch.Take(kTile * g.HS);
      q.dop = scratch.Take(kTile * g.HP);
      q.dot = scratch.Take(kTile * g.HS);
      q.lse2 = scratch.Take(kTile);
      q.D = scratch.Take(kTile);
      q.dq = scratch.Take(kTile * g.HP);
    }
  }
  static int64_t Footprint(const Head& g) {
    return 4 * Scratch::Round(kTile * g.HP) + 2 * Scratch::Round(kTile * kTile) +
           kGroup * (3 * Scratch::Round(kTile * g.HP) + 2 * Scratch::Round(kTile * g.HS) +
                     2 * Scratch::Round(kTile));
  }

  // The key side of tile jt: k, v rows.
  void PackKeys(const Head& g, int64_t jt) {
    const int64_t j0 = jt * kTile, n = std::min(kTile, g.T - j0);
    PackRows(kp, g.HP, g.q + j0 * 3 * g.C + g.C, 3 * g.C, n, g.HS);
    PackRows(vp, g.HP, g.q + j0 * 3 * g.C + 2 * g.C, 3 * g.C, n, g.HS);
  }
  // Queue the rows of key tile jt (k, v; with dk, dv at dqkv_h when not null) or of query tile
  // it (q, dout) for prefetching.
  void PrefetchKeys(const Head& g, int64_t jt, const float* dqkv_h) {
    const int64_t j0 = jt * kTile, n = std::min(kTile, g.T - j0), C3 = 3 * g.C;
    pf.Add(g.q + j0 * C3 + g.C, C3, n);
    pf.Add(g.q + j0 * C3 + 2 * g.C, C3, n);
    if (dqkv_h != nullptr) {
      pf.Add(dqkv_h + j0 * C3 + g.C, C3, n);
      pf.Add(dqkv_h + j0 * C3 + 2 * g.C, C3, n);
    }
  }
  void PrefetchQueries(const Head& g, int64_t it, const float* dout_h) {
    const int64_t i0 = it * kTile, n = std::min(kTile, g.T - i0);
    pf.Add(g.q + i0 * 3 * g.C, 3 * g.C, n);
    pf.Add(dout_h + i0 * g.C, g.C, n);
  }
  // The query side of tile it: q rows and qᵀ (scaled), dout rows and doutᵀ, lse (log2 units)
  // and D; dq zeroed. Padded queries have q = dout = 0 and lse = D = 0: they contribute nothing.
  void PackQueries(QuerySide& q, const Head& g, int64_t it, const float* dout_h, const float* lse_h,
                   const float* D_h) {
    const int64_t i0 = it * kTile, n = std::min(kTile, g.T - i0);
    const float* q0 = g.q + i0 * 3 * g.C;
    PackRows(q.qp, g.HP, q0, 3 * g.C, n, g.HS);
    PackTransposed(q.qt, q0, 3 * g.C, n, g.HS, g.qmul);
    PackRows(q.dop, g.HP, dout_h + i0 * g.C, g.C, n, g.HS);
    PackTransposed(q.dot, dout_h + i0 * g.C, g.C, n, g.HS, 1.0f);
    for (int64_t m = 0; m < kTile; ++m) {
      q.lse2[m] = m < n ? lse_h[i0 + m] * kLog2e : 0.0f;
      q.D[m] = m < n ? D_h[i0 + m] : 0.0f;
    }
    std::fill(q.dq, q.dq + kTile * g.HP, 0.0f);
  }
  // s = P (recomputed from lse), dp = dS = P (dP - D) scale, transposed ([key][query]).
  void ProbabilitiesAndScoreGrads(const QuerySide& q, const Head& g, bool diag) {
    Scores(s, kp, q.qt, g, diag, &pf);
    TileProduct<false, false>(
        kTile, kTile, vp, g.HP, q.dot, kTile, dp, kTile,
        [&](int64_t r0, int64_t x0, int64_t w) {
          return diag && r0 > x0 + w - 1 ? KInterval{0, 0} : KInterval{0, g.HS};
        },
        &pf);
    ProbabilitiesAndGrads(s, dp, q.lse2, q.D, g.scale);
  }
  // dv += Pᵀ·dO, dk += dSᵀ·Q (key rows); in a diagonal tile key n sees queries m >= n only.
  void AccumulateKeyGrads(const QuerySide& q, const Head& g, bool diag) {
    auto range = [&](int64_t r0, int64_t, int64_t) { return KInterval{diag ? r0 : 0, kTile}; };
    TileProduct<false, true>(kTile, g.HP, s, kTile, q.dop, g.HP, dv, g.HP, range, &pf);
    TileProduct<false, true>(kTile, g.HP, dp, kTile, q.qp, g.HP, dk, g.HP, range, &pf);
  }
  // dq += dS·K (query rows); in a diagonal tile query m sees keys n <= m only.
  void AccumulateQueryGrads(const QuerySide& q, const Head& g, bool diag) {
    TileProduct<true, true>(
        kTile, g.HP, dp, kTile, kp, g.HP, q.dq, g.HP,
        [&](int64_t r0, int64_t, int64_t) {
          return KInterval{0, diag ? std::min(kTile, r0 + kRows) : kTile};
        },
        &pf);
  }

  Scratch scratch;
  float *kp, *vp, *dk, *dv, *s, *dp;
  QuerySide qs[kGroup];
  RowPrefetcher pf;
};

// Copies n rows of a (kTile x HP) tile into dqkv rows (stride 3C), HS columns.
void StoreRows(float* dst, int64_t stride, const float* src, int64_t HP, int64_t n, int64_t HS) {
  for (int64_t r = 0; r < n; ++r) CopyRow(dst + r * stride, src + r * HP, HS);
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                      int64_t NH) {
  const int64_t n_t = (T + kTile - 1) / kTile;
  // Query tiles per task: up to kGroup while that leaves at least 8 tasks per thread (the tiling
  // of each query tile, and so the result, is the same whatever the group).
  const int64_t group = std::clamp<int64_t>(B * NH * n_t / (8 * omp_get_max_threads()), 1, kGroup);
  const int64_t n_g = (n_t + group - 1) / group;
  const int64_t HS = C / NH, HP = (HS + 7) / 8 * 8;

#pragma omp parallel
  {
    // Per query tile of the group: qᵀ (scaled), the unnormalised output, the running max m (log2
    // units) and sum l of exp2(s - m).
    struct QueryState {
      float *qt, *o, *m, *l;
    };
    Scratch scratch(kGroup * (Scratch::Round(kTile * HS) + Scratch::Round(kTile * HP) +
                              2 * Scratch::Round(kTile)) +
                    2 * Scratch::Round(kTile * HP) + Scratch::Round(kTile * kTile) +
                    2 * Scratch::Round(kTile));
    QueryState qs[kGroup];
    for (QueryState& q : qs) {
      q.qt = scratch.Take(kTile * HS);
      q.o = scratch.Take(kTile * HP);
      q.m = scratch.Take(kTile);
      q.l = scratch.Take(kTile);
    }
    float* kp = scratch.Take(kTile * HP);
    float* vp = scratch.Take(kTile * HP);
    float* s = scratch.Take(kTile * kTile);
    float* mnew = scratch.Take(kTile);  // max after this key tile
    float* corr = scratch.Take(kTile);  // exp2(m - mnew)
    RowPrefetcher pf;
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t gi = n_g - 1; gi >= 0; --gi) {  // longest first
          const Head g = MakeHead(qkv, b, h, T, C, NH);
          const int64_t it0 = gi * group, it1 = std::min(n_t, it0 + group);
          for (int64_t it = it0; it < it1; ++it) {
            QueryState& q = qs[it - it0];
            const int64_t i0 = it * kTile;
            PackTransposed(q.qt, g.q + i0 * 3 * C, 3 * C, std::min(kTile, T - i0), HS, g.qmul);
            std::fill(q.m, q.m + kTile, kNegInf);
            std::fill(q.l, q.l + kTile, 0.0f);
            std::fill(q.o, q.o + kTile * HP, 0.0f);
          }
          for (int64_t jt = 0; jt < it1; ++jt) {
            const int64_t j0 = jt * kTile, nk = std::min(kTile, T - j0);
            PackRows(kp, HP, g.q + j0 * 3 * C + C, 3 * C, nk, HS);
            PackRows(vp, HP, g.q + j0 * 3 * C + 2 * C, 3 * C, nk, HS);
            pf.Reset(HS, 2);  // 192 rows, over at least 96 + 64 micro-kernel calls
            if (jt + 1 < it1) {
              const int64_t n_next = std::min(kTile, T - j0 - kTile);
              pf.Add(g.q + (j0 + kTile) * 3 * C + C, 3 * C, n_next);
              pf.Add(g.q + (j0 + kTile) * 3 * C + 2 * C, 3 * C, n_next);
            }
            for (int64_t it = std::max(it0, jt); it < it1; ++it) {
              QueryState& q = qs[it - it0];
              const bool diag = jt == it;
              Scores(s, kp, q.qt, g, diag, &pf);
              // Online softmax, vectorised over the queries (the columns of sᵀ).
              std::copy(q.m, q.m + kTile, mnew);
              ColumnMax(s, mnew);
#pragma omp simd
              for (int64_t x = 0; x < kTile; ++x) {
                corr[x] = FastExp2(q.m[x] - mnew[x]);  // 0 on the first tile (m = -inf)
                q.l[x] *= corr[x];
                q.m[x] = mnew[x];
              }
              ExpAndColumnSum(s, mnew, q.l);
              if (jt > 0) {
                for (int64_t x = 0; x < kTile; ++x) {
                  float* ox = q.o + x * HP;
                  const float cx = corr[x];
#pragma omp simd
                  for (int64_t d = 0; d < HP; ++d) ox[d] *= cx;
                }
              }
              // O += P·V; in a diagonal tile query x sees keys n <= x only.
              TileProduct<true, true>(
                  kTile, HP, s, kTile, vp, HP, q.o, HP,
                  [&](int64_t r0, int64_t, int64_t) {
                    return KInterval{0, diag ? std::min(kTile, r0 + kRows) : kTile};
                  },
                  &pf);
            }
          }
          for (int64_t it = it0; it < it1; ++it) {
            const QueryState& q = qs[it - it0];
            const int64_t i0 = it * kTile, nq = std::min(kTile, T - i0);
            for (int64_t x = 0; x < nq; ++x) {
              const int64_t i = i0 + x;
              float* orow = out + (b * T + i) * C + h * HS;
              const float inv = 1.0f / q.l[x];
              for (int64_t d = 0; d < HS; ++d) orow[d] = q.o[x * HP + d] * inv;
              lse[(b * NH + h) * T + i] = (q.m[x] + std::log2(q.l[x])) * kLn2;
            }
          }
        }
      }
    }
  }
}

void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH, C3 = 3 * C;
  const int64_t n_t = (T + kTile - 1) / kTile;
  // D_i = dout_i . out_i per (b, h, i).
  std::vector<float> D(B * NH * T);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        const int64_t row = (b * T + i) * C + h * HS;
        float s = 0.0f;
        for (int64_t d = 0; d < HS; ++d) s += dout[row + d] * out[row + d];
        D[(b * NH + h) * T + i] = s;
      }
    }
  }
  // One task per (b, h) costs 5 tile products per pair against 7 for the split passes: take it
  // when the pairs fill the threads at least 5/7 as well (both give the same bits).
  const int64_t pairs = B * NH, threads = omp_get_max_threads();
  const int64_t rounds = (pairs + threads - 1) / threads;
  const bool per_head = 7 * pairs >= 5 * rounds * threads;

#pragma omp parallel
  {
    BackwardTask task(MakeHead(qkv, 0, 0, T, C, NH));
    if (per_head) {
      // Query tiles outer, kGroup at a time (q and dout packed and transposed once per tile),
      // key tiles inner (k, v packed once per group); dk and dv of a key tile accumulate in dqkv
      // (through the task's buffers), in the same order as in pass 1 below.
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < NH; ++h) {
          const Head g = MakeHead(qkv, b, h, T, C, NH);
          float* dbase = dqkv + b * T * C3 + h * HS;
          const float* dout_h = dout + b * T * C + h * HS;
          const float* lse_h = lse + (b * NH + h) * T;
          const float* D_h = D.data() + (b * NH + h) * T;
          for (int64_t i = 0; i < T; ++i) {
            std::fill_n(dbase + i * C3 + C, HS, 0.0f);
            std::fill_n(dbase + i * C3 + 2 * C, HS, 0.0f);
          }
          for (int64_t it0 = 0; it0 < n_t; it0 += kGroup) {
            const int64_t it1 = std::min(n_t, it0 + kGroup);  // query tiles [it0, it1)
            for (int64_t it = it0; it < it1; ++it) {
              task.PackQueries(task.qs[it - it0], g, it, dout_h, lse_h, D_h);
            }
            for (int64_t jt = 0; jt < it1; ++jt) {
              const int64_t j0 = jt * kTile, nk = std::min(kTile, T - j0);
              float* dk = dbase + j0 * C3 + C;
              float* dv = dk + C;
              task.PackKeys(g, jt);
              // dk, dv of key tile jt so far (the query tiles before it0) are in dqkv.
              PackRows(task.dk, g.HP, dk, C3, nk, HS);
              PackRows(task.dv, g.HP, dv, C3, nk, HS);
              // Next: key tile jt + 1, or the next group's query tiles and key tile 0.
              task.pf.Reset(HS, 1);
              if (jt + 1 < it1) {
                task.PrefetchKeys(g, jt + 1, dbase);
              } else {
                for (int64_t it = it1; it < std::min(n_t, it1 + kGroup); ++it) {
                  task.PrefetchQueries(g, it, dout_h);
                }
                if (it1 < n_t) task.PrefetchKeys(g, 0, dbase);
              }
              for (int64_t it = std::max(it0, jt); it < it1; ++it) {
                const QuerySide& q = task.qs[it - it0];
                task.ProbabilitiesAndScoreGrads(q, g, it == jt);
                task.AccumulateQueryGrads(q, g, it == jt);
                task.AccumulateKeyGrads(q, g, it == jt);
              }
              StoreRows(dk, C3, task.dk, g.HP, nk, HS);
              StoreRows(dv, C3, task.dv, g.HP, nk, HS);
            }
            for (int64_t it = it0; it < it1; ++it) {
              const int64_t i0 = it * kTile, nq = std::min(kTile, T - i0);
              StoreRows(dbase + i0 * C3, C3, task.qs[it - it0].dq, g.HP, nq, HS);
            }
          }
        }
      }
    } else {
      // Pass 1: dk, dv; a task per key tile walks the query tiles from the diagonal on.
#pragma omp for collapse(3) schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < NH; ++h) {
          for (int64_t jt = 0; jt < n_t; ++jt) {  // the first tiles see the most queries
            const Head g = MakeHead(qkv, b, h, T, C, NH);
            float* dbase = dqkv + b * T * C3 + h * HS;
            const float* dout_h = dout + b * T * C + h * HS;
            const float* lse_h = lse + (b * NH + h) * T;
            const float* D_h = D.data() + (b * NH + h) * T;
            const int64_t j0 = jt * kTile, nk = std::min(kTile, T - j0);
            task.PackKeys(g, jt);
            std::fill(task.dk, task.dk + kTile * g.HP, 0.0f);
            std::fill(task.dv, task.dv + kTile * g.HP, 0.0f);
            for (int64_t it = jt; it < n_t; ++it) {
              task.PackQueries(task.qs[0], g, it, dout_h, lse_h, D_h);
              task.pf.Reset(HS, 1);
              if (it + 1 < n_t) task.PrefetchQueries(g, it + 1, dout_h);
              task.ProbabilitiesAndScoreGrads(task.qs[0], g, it == jt);
              task.AccumulateKeyGrads(task.qs[0], g, it == jt);
            }
            StoreRows(dbase + j0 * C3 + C, C3, task.dk, g.HP, nk, HS);
            StoreRows(dbase + j0 * C3 + 2 * C, C3, task.dv, g.HP, nk, HS);
          }
        }
      }
      // Pass 2: dq; a task per query tile walks the key tiles up to the diagonal.
#pragma omp for collapse(3) schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t h = 0; h < NH; ++h) {
          for (int64_t it = n_t - 1; it >= 0; --it) {  // longest tiles first
            const Head g = MakeHead(qkv, b, h, T, C, NH);
            float* dbase = dqkv + b * T * C3 + h * HS;
            const float* dout_h = dout + b * T * C + h * HS;
            const float* lse_h = lse + (b * NH + h) * T;
            const float* D_h = D.data() + (b * NH + h) * T;
            const int64_t i0 = it * kTile, nq = std::min(kTile, T - i0);
            task.PackQueries(task.qs[0], g, it, dout_h, lse_h, D_h);
            for (int64_t jt = 0; jt <= it; ++jt) {
              task.PackKeys(g, jt);
              task.pf.Reset(HS, 1);
              if (jt < it) task.PrefetchKeys(g, jt + 1, nullptr);
              task.ProbabilitiesAndScoreGrads(task.qs[0], g, it == jt);
              task.AccumulateQueryGrads(task.qs[0], g, it == jt);
            }
            StoreRows(dbase + i0 * C3, C3, task.qs[0].dq, g.HP, nq, HS);
          }
        }
      }
    }
  }
}

}  // namespace memtrain::core::cpu
