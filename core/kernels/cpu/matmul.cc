#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "core/kernels/cpu/ops.h"

namespace memtrain::core::cpu {

void MatmulForward(float* out, const float* residual, const float* inp, const float* weight,
                   const float* bias, int64_t N, int64_t C, int64_t OC) {
  float beta = 0.0f;
  if (residual != nullptr || bias != nullptr) {
    // Seed `out` with residual + bias so sgemm adds the product in place (beta = 1).
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      float* o = out + n * OC;
      const float* r = residual ? residual + n * OC : nullptr;
      if (r && bias) {
        for (int64_t j = 0; j < OC; ++j) o[j] = r[j] + bias[j];
      } else if (r) {
        if (o != r) std::memcpy(o, r, OC * sizeof(float));
      } else {
        std::memcpy(o, bias, OC * sizeof(float));
      }
    }
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, beta, out,
              OC);
}

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp) {
  if (dinp != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C,
                accumulate_dinp ? 1.0f : 0.0f, dinp, C);
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f,
              dweight, C);
  if (dbias != nullptr) {
    // Column sums: each thread owns a slice of columns and walks all rows.
    constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < OC; j0 += kCols) {
      int64_t j1 = std::min(OC, j0 + kCols);
      float acc[kCols] = {};
      for (int64_t n = 0; n < N; ++n) {
        const float* d = dout + n * OC;
        for (int64_t j = j0; j < j1; ++j) acc[j - j0] += d[j];
      }
      for (int64_t j = j0; j < j1; ++j) dbias[j] += acc[j - j0];
    }
  }
}

}  // namespace memtrain::core::cpu
