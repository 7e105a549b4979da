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

namespace {
constexpr int64_t kFixedRows = 32;   // rows of out / dinp per tile
constexpr int64_t kFixedCols = 256;  // columns of dweight per tile
int64_t Tiles(int64_t n, int64_t per) { return (n + per - 1) / per; }

// Column sums of dout (N, OC) added to dbias: each thread owns a slice of columns and walks all
// rows, so the order of the sum is fixed.
void BiasBackward(float* dbias, const float* dout, int64_t N, int64_t OC) {
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
}  // namespace

void MatmulForwardFixed(float* out, const float* inp, const float* weight, const float* bias,
                        int64_t N, int64_t C, int64_t OC) {
  // Inside the parallel region OpenBLAS runs single-threaded: each tile's bits are its own.
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < Tiles(N, kFixedRows); ++t) {
    const int64_t n0 = t * kFixedRows, rows = std::min(kFixedRows, N - n0);
    float* o = out + n0 * OC;
    if (bias != nullptr) {
      for (int64_t n = 0; n < rows; ++n) std::memcpy(o + n * OC, bias, OC * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, OC, C, 1.0f, inp + n0 * C, C, weight,
                C, bias != nullptr ? 1.0f : 0.0f, o, OC);
  }
}

void MatmulBackwardFixed(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int64_t N, int64_t C, int64_t OC) {
  const int64_t row_tiles = dinp != nullptr ? Tiles(N, kFixedRows) : 0;
  const int64_t col_tiles = Tiles(C, kFixedCols);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < row_tiles + col_tiles; ++t) {
    if (t < row_tiles) {  // dinp rows (N, C) = dout rows @ weight
      const int64_t n0 = t * kFixedRows, rows = std::min(kFixedRows, N - n0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, OC, 1.0f, dout + n0 * OC, OC,
                  weight, C, 0.0f, dinp + n0 * C, C);
    } else {  // dweight columns (OC, cols) += dout^T @ inp columns
      const int64_t c0 = (t - row_tiles) * kFixedCols, cols = std::min(kFixedCols, C - c0);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, cols, N, 1.0f, dout, OC, inp + c0, C,
                  1.0f, dweight + c0, C);
    }
  }
  if (dbias != nullptr) BiasBackward(dbias, dout, N, OC);
}

void MatmulBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t N, int64_t C, int64_t OC, bool accumulate_dinp) {
  if (dinp != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C,
                accumulate_dinp ? 1.0f : 0.0f, dinp, C);
  }
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f,
              dweight, C);
  if (dbias != nullptr) BiasBackward(dbias, dout, N, OC);
}

}  // namespace memtrain::core::cpu
