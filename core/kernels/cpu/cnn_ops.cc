// Convolution (im2col + sgemm), BatchNorm2d, ReLU and 2x2 max-pool kernels. See cnn_ops.h for the
// shapes, the scratch contract and the determinism guarantees.
#include "core/kernels/cpu/cnn_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status.h"

namespace memtrain::core::cpu {
namespace {

struct ConvDims {
  int64_t C, H, W, OC, K, stride, pad, OH, OW;
  int64_t ckk;  // C*K*K: rows of the im2col matrix
  int64_t ohw;  // OH*OW: its columns
  bool direct;  // K = 1, stride 1, pad 0: the image itself is the im2col matrix
  int64_t slot_floats;
};

ConvDims MakeConvDims(int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K, int64_t stride,
                      int64_t pad) {
  MT_CHECK(C > 0 && H > 0 && W > 0 && OC > 0 && K > 0 && stride > 0 && pad >= 0)
      << "bad conv2d dims";
  ConvDims d;
  d.C = C, d.H = H, d.W = W, d.OC = OC, d.K = K, d.stride = stride, d.pad = pad;
  d.OH = Conv2dOutSize(H, K, stride, pad);
  d.OW = Conv2dOutSize(W, K, stride, pad);
  MT_CHECK(d.OH > 0 && d.OW > 0) << "conv2d kernel larger than the padded input";
  d.ckk = C * K * K;
  d.ohw = d.OH * d.OW;
  d.direct = K == 1 && stride == 1 && pad == 0;
  d.slot_floats = d.ckk * d.ohw + OC * d.ckk + OC;
  return d;
}

// Output positions o in [0, n_out) whose input index o * stride + off lies in [0, n_in):
// [*lo, *hi).
void ValidRange(int64_t n_in, int64_t n_out, int64_t stride, int64_t off, int64_t* lo,
                int64_t* hi) {
  int64_t l = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int64_t h = n_in - off <= 0 ? 0 : (n_in - off + stride - 1) / stride;
  l = std::min(l, n_out);
  h = std::max(l, std::min(h, n_out));
  *lo = l;
  *hi = h;
}

// col (C*K*K, OH*OW): row (c, ki, kj), column (oh, ow) = img[c, oh*s + ki - pad, ow*s + kj - pad]
// or 0 outside the image. img (C, H, W).
void Im2Col(float* col, const float* img, const ConvDims& d) {
  const int64_t s = d.stride;
  for (int64_t c = 0; c < d.C; ++c) {
    for (int64_t ki = 0; ki < d.K; ++ki) {
      for (int64_t kj = 0; kj < d.K; ++kj) {
        float* row = col + ((c * d.K + ki) * d.K + kj) * d.ohw;
        const int64_t off_w = kj - d.pad;
        int64_t lo, hi;
        ValidRange(d.W, d.OW, s, off_w, &lo, &hi);
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          float* dst = row + oh * d.OW;
          const int64_t ih = oh * s + ki - d.pad;
          if (ih < 0 || ih >= d.H) {
            std::memset(dst, 0, d.OW * sizeof(float));
            continue;
          }
          const float* src = img + (c * d.H + ih) * d.W + off_w;
          for (int64_t ow = 0; ow < lo; ++ow) dst[ow] = 0.0f;
          if (s == 1) {
            if (hi > lo) std::memcpy(dst + lo, src + lo, (hi - lo) * sizeof(float));
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * s];
          }
          for (int64_t ow = hi; ow < d.OW; ++ow) dst[ow] = 0.0f;
        }
      }
    }
  }
}

// The adjoint of Im2Col: img (C, H, W) = 0, then every col entry added to its input position
// (entries of the padding dropped), in a fixed order.
void Col2Im(float* img, const float* col, const ConvDims& d) {
  const int64_t s = d.stride;
  std::memset(img, 0, d.C * d.H * d.W * sizeof(float));
  for (int64_t c = 0; c < d.C; ++c) {
    for (int64_t ki = 0; ki < d.K; ++ki) {
      for (int64_t kj = 0; kj < d.K; ++kj) {
        const float* row = col + ((c * d.K + ki) * d.K + kj) * d.ohw;
        const int64_t off_w = kj - d.pad;
        int64_t lo, hi;
        ValidRange(d.W, d.OW, s, off_w, &lo, &hi);
        for (int64_t oh = 0; oh < d.OH; ++oh) {
          const int64_t ih = oh * s + ki - d.pad;
          if (ih < 0 || ih >= d.H) continue;
          const float* src = row + oh * d.OW;
          float* dst = img + (c * d.H + ih) * d.W + off_w;
          if (s == 1) {
#pragma omp simd
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow * s] += src[ow];
          }
        }
      }
    }
  }
}

}  // namespace

int64_t Conv2dOutSize(int64_t H, int64_t K, int64_t stride, int64_t pad) {
  return (H + 2 * pad - K) / stride + 1;
}

int64_t Conv2dScratchFloats(int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K, int64_t stride,
                            int64_t pad, int64_t slots) {
  MT_CHECK(slots >= 1) << "conv2d scratch needs at least one slot";
  return slots * MakeConvDims(C, H, W, OC, K, stride, pad).slot_floats;
}

void Conv2dForward(float* out, const float* inp, const float* weight, const float* bias, int64_t B,
                   int64_t C, int64_t H, int64_t W, int64_t OC, int64_t K, int64_t stride,
                   int64_t pad, float* scratch, int64_t slots) {
  const ConvDims d = MakeConvDims(C, H, W, OC, K, stride, pad);
  MT_CHECK(slots >= 1) << "conv2d scratch needs at least one slot";
  const int64_t S = std::min(slots, B);
  // One slot per iteration: each image is computed by one thread with single-threaded sgemm
  // (OpenBLAS does not thread inside a parallel region), so the result is thread-count free.
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < S; ++s) {
    float* col = scratch + s * d.slot_floats;
    const int64_t b0 = s * B / S, b1 = (s + 1) * B / S;
    for (int64_t b = b0; b < b1; ++b) {
      const float* x = inp + b * C * H * W;
      float* y = out + b * OC * d.ohw;
      const float* a = x;
      if (!d.direct) {
        Im2Col(col, x, d);
        a = col;
      }
      float beta = 0.0f;
      if (bias != nullptr) {
        for (int64_t o = 0; o < OC; ++o) std::fill(y + o * d.ohw, y + (o + 1) * d.ohw, bias[o]);
        beta = 1.0f;
      }
      // y (OC, OH*OW) = weight (OC, C*K*K) @ col (C*K*K, OH*OW) (+ bias)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, d.ohw, d.ckk, 1.0f, weight, d.ckk,
                  a, d.ohw, beta, y, d.ohw);
    }
  }
}

void Conv2dBackward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                    const float* weight, int64_t B, int64_t C, int64_t H, int64_t W, int64_t OC,
                    int64_t K, int64_t stride, int64_t pad, float* scratch, int64_t slots) {
  const ConvDims d = MakeConvDims(C, H, W, OC, K, stride, pad);
  MT_CHECK(slots >= 1) << "conv2d scratch needs at least one slot";
  if (B <= 0) return;
  const int64_t S = std::min(slots, B);
  // Pass 1, one slot per iteration over its fixed range of images: the slot's partial weight and
  // bias gradients (written for its first image, then accumulated in image order) and each
  // image's input gradient.
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < S; ++s) {
    float* col = scratch + s * d.slot_floats;
    float* dw = col + d.ckk * d.ohw;
    float* db = dw + OC * d.ckk;
    const int64_t b0 = s * B / S, b1 = (s + 1) * B / S;
    for (int64_t b = b0; b < b1; ++b) {
      const float* x = inp + b * C * H * W;
      const float* dy = dout + b * OC * d.ohw;
      if (dweight != nullptr) {
        const float* a = x;
        if (!d.direct) {
          Im2Col(col, x, d);
          a = col;
        }
        // dw (OC, C*K*K) (+)= dy (OC, OH*OW) @ col^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, d.ckk, d.ohw, 1.0f, dy, d.ohw, a,
                    d.ohw, b == b0 ? 0.0f : 1.0f, dw, d.ckk);
      }
      if (dbias != nullptr) {
        for (int64_t o = 0; o < OC; ++o) {
          const float* r = dy + o * d.ohw;
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int64_t p = 0; p < d.ohw; ++p) sum += r[p];
          db[o] = b == b0 ? sum : db[o] + sum;
        }
      }
      if (dinp != nullptr) {
        float* dx = dinp + b * C * H * W;
        // dcol (C*K*K, OH*OW) = weight^T @ dy, then scattered back (written) onto the image.
        float* dcol = d.direct ? dx : col;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d.ckk, d.ohw, OC, 1.0f, weight, d.ckk,
                    dy, d.ohw, 0.0f, dcol, d.ohw);
        if (!d.direct) Col2Im(dx, col, d);
      }
    }
  }
  // Pass 2: the slots' partials added in slot order, parallel over gradient entries.
  if (dweight != nullptr) {
    const int64_t n = OC * d.ckk;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      float t = scratch[d.ckk * d.ohw + i];
      for (int64_t s = 1; s < S; ++s) t += scratch[s * d.slot_floats + d.ckk * d.ohw + i];
      dweight[i] += t;
    }
  }
  if (dbias != nullptr) {
    for (int64_t o = 0; o < OC; ++o) {
      const int64_t at = d.ckk * d.ohw + OC * d.ckk + o;
      float t = scratch[at];
      for (int64_t s = 1; s < S; ++s) t += scratch[s * d.slot_floats + at];
      dbias[o] += t;
    }
  }
}

// ---- BatchNorm2d -------------------------------------------------------------------------------
namespace {

// Mean and biased variance of channel c, two passes in double.
void ChannelStats(const float* inp, int64_t B, int64_t C, int64_t HW, int64_t c, double* mean,
                  double* var) {
  const double n = static_cast<double>(B * HW);
  double sum = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    const float* x = inp + (b * C + c) * HW;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < HW; ++i) sum += x[i];
  }
  const double m = sum / n;
  double sq = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    const float* x = inp + (b * C + c) * HW;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < HW; ++i) {
      const double t = x[i] - m;
      sq += t * t;
    }
  }
  *mean = m;
  *var = sq / n;
}

}  // namespace

void BatchNorm2dForwardTrain(float* out, float* mean, float* rstd, float* running_mean,
                             float* running_var, const float* inp, const float* weight,
                             const float* bias, int64_t B, int64_t C, int64_t HW, float momentum,
                             float eps) {
  const int64_t n = B * HW;
  MT_CHECK(n > 1) << "BatchNorm2d in training mode needs more than 1 value per channel, got " << n;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double m, var;
    ChannelStats(inp, B, C, HW, c, &m, &var);
    const float mf = static_cast<float>(m);
    const float s = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean[c] = mf;
    rstd[c] = s;
    if (running_mean != nullptr) {
      running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * m);
    }
    if (running_var != nullptr) {
      const double unbiased = var * n / (n - 1);
      running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
    }
    const float scale = s * weight[c], shift = bias[c];
    for (int64_t b = 0; b < B; ++b) {
      const float* x = inp + (b * C + c) * HW;
      float* o = out + (b * C + c) * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) o[i] = (x[i] - mf) * scale + shift;
    }
  }
}

void BatchNorm2dForwardEval(float* out, const float* inp, const float* weight, const float* bias,
                            const float* running_mean, const float* running_var, int64_t B,
                            int64_t C, int64_t HW, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const int64_t c = p % C;
    const float m = running_mean[c];
    const float scale =
        static_cast<float>(1.0 / std::sqrt(double{running_var[c]} + eps)) * weight[c];
    const float shift = bias[c];
    const float* x = inp + p * HW;
    float* o = out + p * HW;
#pragma omp simd
    for (int64_t i = 0; i < HW; ++i) o[i] = (x[i] - m) * scale + shift;
  }
}

void BatchNorm2dBatchStats(float* mean, float* var, const float* inp, int64_t B, int64_t C,
                           int64_t HW) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double m, v;
    ChannelStats(inp, B, C, HW, c, &m, &v);
    mean[c] = static_cast<float>(m);
    var[c] = static_cast<float>(v);
  }
}

void BatchNorm2dBackward(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, const float* mean,
                         const float* rstd, int64_t B, int64_t C, int64_t HW) {
  const double n = static_cast<double>(B * HW);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const float m = mean[c], s = rstd[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const float* x = inp + (b * C + c) * HW;
      const float* dy = dout + (b * C + c) * HW;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
      for (int64_t i = 0; i < HW; ++i) {
        sum_dy += dy[i];
        sum_dy_xhat += double{dy[i]} * ((x[i] - m) * s);
      }
    }
    dweight[c] += static_cast<float>(sum_dy_xhat);
    dbias[c] += static_cast<float>(sum_dy);
    // dx = w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
    const float k = weight[c] * s;
    const float mdy = static_cast<float>(sum_dy / n), mdyx = static_cast<float>(sum_dy_xhat / n);
    for (int64_t b = 0; b < B; ++b) {
      const float* x = inp + (b * C + c) * HW;
      const float* dy = dout + (b * C + c) * HW;
      float* dx = dinp + (b * C + c) * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) dx[i] = k * (dy[i] - mdy - (x[i] - m) * s * mdyx);
    }
  }
}

// ---- ReLU --------------------------------------------------------------------------------------
void ReluForward(float* out, const float* inp, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void ReluBackward(float* dinp, const float* out, const float* dout, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dinp[i] = out[i] > 0.0f ? dout[i] : 0.0f;
}

// ---- 2x2 max-pool ------------------------------------------------------------------------------
void MaxPool2dForward(float* out, int32_t* argmax, const float* inp, int64_t B, int64_t C,
                      int64_t H, int64_t W) {
  const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    const float* x = inp + p * H * W;
    float* o = out + p * OH * OW;
    int32_t* a = argmax + p * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t i0 = 2 * oh * W + 2 * ow;
        const int64_t idx[4] = {i0, i0 + 1, i0 + W, i0 + W + 1};
        float best = x[idx[0]];
        int64_t at = idx[0];
        for (int k = 1; k < 4; ++k) {
          const float v = x[idx[k]];
          if (v > best || std::isnan(v)) {  // strict: ties keep the first; NaN propagates
            best = v;
            at = idx[k];
          }
        }
        o[oh * OW + ow] = best;
        a[oh * OW + ow] = static_cast<int32_t>(at);
      }
    }
  }
}

void MaxPool2dBackward(float* dinp, const float* dout, const int32_t* argmax, int64_t B, int64_t C,
                       int64_t H, int64_t W) {
  const int64_t OH = H / 2, OW = W / 2;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < B * C; ++p) {
    float* dx = dinp + p * H * W;
    const float* dy = dout + p * OH * OW;
    const int32_t* a = argmax + p * OH * OW;
    std::memset(dx, 0, H * W * sizeof(float));
    for (int64_t i = 0; i < OH * OW; ++i) dx[a[i]] += dy[i];
  }
}

}  // namespace memtrain::core::cpu
