// LayerNorm, GELU, residual and embedding kernels.
#include <algorithm>
#include <cmath>

#include "core/kernels/cpu/fast_math.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::core::cpu {

void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                      const float* bias, int64_t N, int64_t C) {
  constexpr float kEps = 1e-5f;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    float m = 0.0f;
    for (int64_t i = 0; i < C; ++i) m += x[i];
    m /= C;
    float var = 0.0f;
    for (int64_t i = 0; i < C; ++i) var += (x[i] - m) * (x[i] - m);
    var /= C;
    float s = 1.0f / std::sqrt(var + kEps);
    float* o = out + n * C;
    for (int64_t i = 0; i < C; ++i) o[i] = (x[i] - m) * s * weight[i] + bias[i];
    mean[n] = m;
    rstd[n] = s;
  }
}

void LayerNormBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, const float* mean, const float* rstd,
                       int64_t N, int64_t C) {
  // Pass 1, parallel over rows: the input gradient.
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* d = dout + n * C;
    float m = mean[n], s = rstd[n];
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int64_t i = 0; i < C; ++i) {
      float norm = (x[i] - m) * s;
      float dnorm = weight[i] * d[i];
      dnorm_mean += dnorm;
      dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    float* di = dinp + n * C;
    for (int64_t i = 0; i < C; ++i) {
      float norm = (x[i] - m) * s;
      float dnorm = weight[i] * d[i];
      di[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
    }
  }
  // Pass 2, parallel over column slices, so no two threads touch the same dweight entry.
  constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < C; j0 += kCols) {
    int64_t j1 = std::min(C, j0 + kCols);
    float dw[kCols] = {}, db[kCols] = {};
    for (int64_t n = 0; n < N; ++n) {
      const float* x = inp + n * C;
      const float* d = dout + n * C;
      float m = mean[n], s = rstd[n];
      for (int64_t j = j0; j < j1; ++j) {
        dw[j - j0] += (x[j] - m) * s * d[j];
        db[j - j0] += d[j];
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      dweight[j] += dw[j - j0];
      dbias[j] += db[j - j0];
    }
  }
}

namespace {
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
}

void GeluForward(float* out, const float* inp, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float x = inp[i];
    float u = kGeluScale * (x + 0.044715f * x * x * x);
    out[i] = 0.5f * x * (1.0f + FastTanh(u));
  }
}

void GeluBackward(float* dinp, const float* inp, const float* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float x = inp[i];
    float u = kGeluScale * (x + 0.044715f * x * x * x);
    float th = FastTanh(u);
    float sech2 = 1.0f - th * th;
    float grad =
        0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = grad * dout[i];
  }
}

void ResidualForward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void AddInPlace(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void EmbeddingForward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                      int64_t B, int64_t T, int64_t C, int64_t pos_offset) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      float* o = out + (b * T + t) * C;
      const float* e = wte + static_cast<int64_t>(tokens[b * T + t]) * C;
      const float* p = wpe + (pos_offset + t) * C;
      for (int64_t i = 0; i < C; ++i) o[i] = e[i] + p[i];
    }
  }
}

void EmbeddingBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                       int64_t B, int64_t T, int64_t C, int64_t pos_offset) {
  // Repeated tokens scatter into the same row, so threads split the channels, not the positions.
  constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < C; j0 += kCols) {
    int64_t j1 = std::min(C, j0 + kCols);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        const float* d = dout + (b * T + t) * C;
        float* e = dwte + static_cast<int64_t>(tokens[b * T + t]) * C;
        float* p = dwpe ? dwpe + (pos_offset + t) * C : nullptr;
        for (int64_t j = j0; j < j1; ++j) {
          e[j] += d[j];
          if (p) p[j] += d[j];
        }
      }
    }
  }
}

}  // namespace memtrain::core::cpu
