// Causal attention with an online softmax (FlashAttention-style) on the CPU.
//
// Forward: each task is one (batch, head, tile of kQueryTile queries); it walks the key tiles up to
// the diagonal keeping a running max m, sum l and unnormalised output per query, so the memory per
// task is O(kQueryTile * HS) whatever T is. It saves lse = m + log(l) per query.
// Backward: the probabilities are recomputed from q, k and lse; D_i = dout_i . out_i. With at
// least as many (batch, head) pairs as threads, one task per pair walks key tiles outer (k, v,
// dk, dv stay in cache). With fewer (a long sequence with few heads, e.g. a sequence-parallel
// shard) it splits FlashAttention-2 style without atomics: pass 1 has a task per key tile
// accumulating dk, dv; pass 2 a task per query tile accumulating dq; p and dp are computed twice.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/kernels/cpu/fast_math.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::core::cpu {
namespace {

constexpr int64_t kQueryTile = 32;
constexpr int64_t kKeyTile = 64;

inline float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void Axpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// Recomputes, for query i and key j, the probability p_ij = exp(scale q_i.k_j - lse_i) and the
// score gradient ds_ij = p_ij (dout_i.v_j - D_i) scale.
struct ProbGrad {
  float p, ds;
};
inline ProbGrad Recompute(const float* qi, const float* kj, const float* doi, const float* vj,
                          float lse_i, float D_i, float scale, int64_t HS) {
  const float p = FastExp(scale * Dot(qi, kj, HS) - lse_i);
  return {p, p * (Dot(doi, vj, HS) - D_i) * scale};
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t C,
                      int64_t NH) {
  const int64_t HS = C / NH;
  const int64_t C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t n_qt = (T + kQueryTile - 1) / kQueryTile;

#pragma omp parallel
  {
    std::vector<float> q(kQueryTile * HS), acc(kQueryTile * HS), s(kKeyTile);
    float m[kQueryTile], l[kQueryTile];
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t qt = n_qt - 1; qt >= 0; --qt) {  // longest tiles first
          const int64_t i0 = qt * kQueryTile, i1 = std::min(T, i0 + kQueryTile);
          const int64_t nq = i1 - i0;
          const float* base = qkv + b * T * C3;
          for (int64_t r = 0; r < nq; ++r) {
            const float* qi = base + (i0 + r) * C3 + h * HS;
            for (int64_t d = 0; d < HS; ++d) q[r * HS + d] = qi[d] * scale;
            m[r] = -std::numeric_limits<float>::infinity();
            l[r] = 0.0f;
          }
          std::fill(acc.begin(), acc.begin() + nq * HS, 0.0f);
          for (int64_t j0 = 0; j0 < i1; j0 += kKeyTile) {
            const int64_t j1 = std::min(i1, j0 + kKeyTile);
            for (int64_t r = 0; r < nq; ++r) {
              const int64_t jlim = std::min(j1, i0 + r + 1);  // causal: keys j <= i
              if (jlim <= j0) continue;
              const float* qr = &q[r * HS];
              float mx = m[r];
              for (int64_t j = j0; j < jlim; ++j) {
                s[j - j0] = Dot(qr, base + j * C3 + C + h * HS, HS);
                mx = std::max(mx, s[j - j0]);
              }
              const float corr = std::exp(m[r] - mx);
              float* ar = &acc[r * HS];
              float lr = l[r] * corr;
              for (int64_t d = 0; d < HS; ++d) ar[d] *= corr;
              for (int64_t j = j0; j < jlim; ++j) {
                const float p = std::exp(s[j - j0] - mx);
                lr += p;
                Axpy(ar, p, base + j * C3 + 2 * C + h * HS, HS);
              }
              l[r] = lr;
              m[r] = mx;
            }
          }
          for (int64_t r = 0; r < nq; ++r) {
            const int64_t i = i0 + r;
            float* o = out + (b * T + i) * C + h * HS;
            const float inv = 1.0f / l[r];
            for (int64_t d = 0; d < HS; ++d) o[d] = acc[r * HS + d] * inv;
            lse[(b * NH + h) * T + i] = m[r] + std::log(l[r]);
          }
        }
      }
    }
  }
}

namespace {

// One task per (batch, head); key tiles outer so k, v, dk, dv stay in cache.
void BackwardPerHead(float* dqkv, const float* dout, const float* qkv, const float* out,
                     const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH;
  const int64_t C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));

#pragma omp parallel
  {
    std::vector<float> D(T);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        const float* base = qkv + b * T * C3;
        float* dbase = dqkv + b * T * C3;
        const float* lse_bh = lse + (b * NH + h) * T;
        for (int64_t i = 0; i < T; ++i) {
          const int64_t row = (b * T + i) * C + h * HS;
          D[i] = Dot(dout + row, out + row, HS);
          for (int part = 0; part < 3; ++part) {
            std::fill_n(dbase + i * C3 + part * C + h * HS, HS, 0.0f);
          }
        }
        for (int64_t j0 = 0; j0 < T; j0 += kKeyTile) {
          const int64_t j1 = std::min(T, j0 + kKeyTile);
          for (int64_t i = j0; i < T; ++i) {
            const float* qi = base + i * C3 + h * HS;
            const float* doi = dout + (b * T + i) * C + h * HS;
            float* dqi = dbase + i * C3 + h * HS;
            const int64_t jlim = std::min(j1, i + 1);
            for (int64_t j = j0; j < jlim; ++j) {
              const float* kj = base + j * C3 + C + h * HS;
              const float* vj = base + j * C3 + 2 * C + h * HS;
              const auto [p, ds] = Recompute(qi, kj, doi, vj, lse_bh[i], D[i], scale, HS);
              Axpy(dbase + j * C3 + 2 * C + h * HS, p, doi, HS);  // dv_j
              Axpy(dqi, ds, kj, HS);                              // dq_i
              Axpy(dbase + j * C3 + C + h * HS, ds, qi, HS);      // dk_j
            }
          }
        }
      }
    }
  }
}

void BackwardPerTile(float* dqkv, const float* dout, const float* qkv, const float* out,
                     const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  const int64_t HS = C / NH;
  const int64_t C3 = 3 * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HS));
  const int64_t n_kt = (T + kKeyTile - 1) / kKeyTile;
  const int64_t n_qt = (T + kQueryTile - 1) / kQueryTile;
  // D_i = dout_i . out_i, per (b, h, i).
  std::vector<float> D(B * NH * T);
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < NH; ++h) {
      for (int64_t i = 0; i < T; ++i) {
        const int64_t row = (b * T + i) * C + h * HS;
        D[(b * NH + h) * T + i] = Dot(dout + row, out + row, HS);
      }
    }
  }
#pragma omp parallel
  {
    // Pass 1: dk and dv. A task owns one key tile of one (b, h) and walks every query that sees
    // it, so no two tasks write the same rows.
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t kt = 0; kt < n_kt; ++kt) {  // the first tiles see the most queries
          const float* base = qkv + b * T * C3;
          float* dbase = dqkv + b * T * C3;
          const float* lse_bh = lse + (b * NH + h) * T;
          const float* D_bh = D.data() + (b * NH + h) * T;
          const int64_t j0 = kt * kKeyTile, j1 = std::min(T, j0 + kKeyTile);
          for (int64_t j = j0; j < j1; ++j) {
            std::fill_n(dbase + j * C3 + C + h * HS, HS, 0.0f);
            std::fill_n(dbase + j * C3 + 2 * C + h * HS, HS, 0.0f);
          }
          for (int64_t i = j0; i < T; ++i) {
            const float* qi = base + i * C3 + h * HS;
            const float* doi = dout + (b * T + i) * C + h * HS;
            const int64_t jlim = std::min(j1, i + 1);
            for (int64_t j = j0; j < jlim; ++j) {
              const float* kj = base + j * C3 + C + h * HS;
              const float* vj = base + j * C3 + 2 * C + h * HS;
              const auto [p, ds] = Recompute(qi, kj, doi, vj, lse_bh[i], D_bh[i], scale, HS);
              Axpy(dbase + j * C3 + 2 * C + h * HS, p, doi, HS);  // dv_j
              Axpy(dbase + j * C3 + C + h * HS, ds, qi, HS);      // dk_j
            }
          }
        }
      }
    }
    // Pass 2: dq. A task owns one query tile and walks the keys up to the diagonal
    // (recomputing p and dp: cheaper than synchronising writes to dq across key tiles).
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < NH; ++h) {
        for (int64_t qt = n_qt - 1; qt >= 0; --qt) {  // longest tiles first
          const float* base = qkv + b * T * C3;
          float* dbase = dqkv + b * T * C3;
          const float* lse_bh = lse + (b * NH + h) * T;
          const float* D_bh = D.data() + (b * NH + h) * T;
          const int64_t i0 = qt * kQueryTile, i1 = std::min(T, i0 + kQueryTile);
          for (int64_t i = i0; i < i1; ++i) std::fill_n(dbase + i * C3 + h * HS, HS, 0.0f);
          // Key tiles outer, so each k, v tile is reused by every query of this tile.
          for (int64_t j0 = 0; j0 < i1; j0 += kKeyTile) {
            const int64_t j1 = std::min(i1, j0 + kKeyTile);
            for (int64_t i = std::max(i0, j0); i < i1; ++i) {
              const float* qi = base + i * C3 + h * HS;
              const float* doi = dout + (b * T + i) * C + h * HS;
              float* dqi = dbase + i * C3 + h * HS;
              const int64_t jlim = std::min(j1, i + 1);
              for (int64_t j = j0; j < jlim; ++j) {
                const float* kj = base + j * C3 + C + h * HS;
                const float* vj = base + j * C3 + 2 * C + h * HS;
                const float ds = Recompute(qi, kj, doi, vj, lse_bh[i], D_bh[i], scale, HS).ds;
                Axpy(dqi, ds, kj, HS);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

void AttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                       const float* lse, int64_t B, int64_t T, int64_t C, int64_t NH) {
  // One pass per (batch, head) is cheapest when there are enough of them for every thread;
  // otherwise (long sequences, few heads) split over tiles at the cost of recomputing p twice.
  if (B * NH >= omp_get_max_threads()) {
    BackwardPerHead(dqkv, dout, qkv, out, lse, B, T, C, NH);
  } else {
    BackwardPerTile(dqkv, dout, qkv, out, lse, B, T, C, NH);
  }
}

}  // namespace memtrain::core::cpu
