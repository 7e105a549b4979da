// CNN kernels (cnn_ops.h) against independent references: naive double-precision loops for the
// forward pass, central finite differences of those loops (in double) for the backward pass; the
// conv's thread-count independence; a small conv-BN-ReLU-pool-linear-cross-entropy network end to
// end against finite differences, and another against PyTorch (the golden file written by
// tests/golden/make_cnn_kernels_golden.py).
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/kernels/cpu/cnn_ops.h"
#include "core/kernels/cpu/ops.h"
#include "core/threads.h"
#include "tests/core/test_util.h"

namespace memtrain::core::cpu {
namespace {

using memtrain::testing::AllClose;
using memtrain::testing::NumericalGrad;
using memtrain::testing::RandomFloats;
using memtrain::testing::ToDouble;

using Vec = std::vector<double>;

double Dot(const Vec& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- conv2d -------------------------------------------------------------------------------------
struct ConvShape {
  int B, C, H, W, OC, K, stride, pad;
  int OH() const { return (H + 2 * pad - K) / stride + 1; }
  int OW() const { return (W + 2 * pad - K) / stride + 1; }
};

Vec NaiveConv(const Vec& x, const Vec& w, const Vec& bias, const ConvShape& s) {
  const int OH = s.OH(), OW = s.OW();
  Vec out(size_t(s.B) * s.OC * OH * OW);
  for (int b = 0; b < s.B; ++b)
    for (int o = 0; o < s.OC; ++o)
      for (int oh = 0; oh < OH; ++oh)
        for (int ow = 0; ow < OW; ++ow) {
          double acc = bias.empty() ? 0 : bias[o];
          for (int c = 0; c < s.C; ++c)
            for (int ki = 0; ki < s.K; ++ki)
              for (int kj = 0; kj < s.K; ++kj) {
                const int ih = oh * s.stride - s.pad + ki, iw = ow * s.stride - s.pad + kj;
                if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
                acc += x[((b * s.C + c) * s.H + ih) * s.W + iw] *
                       w[((o * s.C + c) * s.K + ki) * s.K + kj];
              }
          out[((b * s.OC + o) * OH + oh) * OW + ow] = acc;
        }
  return out;
}

const ConvShape kConvShapes[] = {
    {2, 3, 7, 6, 4, 3, 1, 1},    // 3x3 "same", B > 1, C > 1, odd H
    {2, 2, 9, 8, 3, 3, 2, 1},    // stride 2, pad 1, odd H
    {3, 2, 7, 7, 5, 3, 2, 0},    // stride 2, pad 0, odd H and W
    {2, 1, 5, 5, 3, 3, 1, 0},    // one input channel (the first layer), pad 0
    {2, 4, 5, 6, 3, 1, 1, 0},    // 1x1 stride 1 pad 0: the direct path (no im2col)
    {1, 3, 6, 5, 2, 1, 2, 1},    // 1x1 with stride and pad
    {2, 2, 11, 10, 3, 5, 3, 2},  // 5x5, stride 3, pad 2
};

std::vector<float> ConvScratch(const ConvShape& s, int slots) {
  return std::vector<float>(Conv2dScratchFloats(s.C, s.H, s.W, s.OC, s.K, s.stride, s.pad, slots),
                            NAN);
}

TEST(Conv2dTest, OutSizeAndScratchSize) {
  EXPECT_EQ(Conv2dOutSize(28, 3, 1, 1), 28);
  EXPECT_EQ(Conv2dOutSize(28, 3, 2, 1), 14);
  EXPECT_EQ(Conv2dOutSize(7, 3, 2, 0), 3);
  EXPECT_EQ(Conv2dOutSize(6, 5, 3, 2), 2);
  // per slot: col (C*K*K, OH*OW) + dw (OC, C*K*K) + db (OC)
  EXPECT_EQ(Conv2dScratchFloats(32, 28, 28, 64, 3, 1, 1, 4), 4 * (288 * 784 + 64 * 288 + 64));
}

TEST(Conv2dTest, ForwardMatchesNaiveForEveryShapeAndSlotCount) {
  uint32_t seed = 100;
  for (const ConvShape& s : kConvShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "B" << s.B << " C" << s.C << " H" << s.H << " W" << s.W << " OC" << s.OC << " K"
                 << s.K << " s" << s.stride << " p" << s.pad);
    auto x = RandomFloats(size_t(s.B) * s.C * s.H * s.W, seed++);
    auto w = RandomFloats(size_t(s.OC) * s.C * s.K * s.K, seed++);
    auto b = RandomFloats(s.OC, seed++);
    const size_t n_out = size_t(s.B) * s.OC * s.OH() * s.OW();
    std::vector<float> first;
    for (int slots : {1, 2, 5}) {
      auto scratch = ConvScratch(s, slots);
      std::vector<float> out(n_out, NAN);
      Conv2dForward(out.data(), x.data(), w.data(), b.data(), s.B, s.C, s.H, s.W, s.OC, s.K,
                    s.stride, s.pad, scratch.data(), slots);
      EXPECT_TRUE(AllClose(out, NaiveConv(ToDouble(x), ToDouble(w), ToDouble(b), s), 1e-5));
      if (first.empty()) first = out;
      EXPECT_EQ(out, first) << "forward depends on the slot count";
      // No bias.
      Conv2dForward(out.data(), x.data(), w.data(), nullptr, s.B, s.C, s.H, s.W, s.OC, s.K,
                    s.stride, s.pad, scratch.data(), slots);
      EXPECT_TRUE(AllClose(out, NaiveConv(ToDouble(x), ToDouble(w), {}, s), 1e-5));
    }
  }
}

TEST(Conv2dTest, BackwardMatchesFiniteDifferences) {
  uint32_t seed = 200;
  for (const ConvShape& s : kConvShapes) {
    SCOPED_TRACE(::testing::Message()
                 << "B" << s.B << " C" << s.C << " H" << s.H << " W" << s.W << " OC" << s.OC << " K"
                 << s.K << " s" << s.stride << " p" << s.pad);
    auto x = RandomFloats(size_t(s.B) * s.C * s.H * s.W, seed++);
    auto w = RandomFloats(size_t(s.OC) * s.C * s.K * s.K, seed++);
    auto b = RandomFloats(s.OC, seed++);
    auto R = RandomFloats(size_t(s.B) * s.OC * s.OH() * s.OW(), seed++);  // loss = sum(out * R)
    const Vec xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b);
    auto gx = NumericalGrad([&](const Vec& v) { return Dot(NaiveConv(v, wd, bd, s), R); }, xd);
    auto gw = NumericalGrad([&](const Vec& v) { return Dot(NaiveConv(xd, v, bd, s), R); }, wd);
    auto gb = NumericalGrad([&](const Vec& v) { return Dot(NaiveConv(xd, wd, v, s), R); }, bd);
    const auto dw0 = RandomFloats(w.size(), seed++), db0 = RandomFloats(b.size(), seed++);
    for (size_t i = 0; i < gw.size(); ++i) gw[i] += dw0[i];  // accumulated
    for (size_t i = 0; i < gb.size(); ++i) gb[i] += db0[i];
    for (int slots : {1, 2, 5}) {
      auto scratch = ConvScratch(s, slots);
      std::vector<float> dx(x.size(), NAN), dw = dw0, db = db0;  // dx is written
      Conv2dBackward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), s.B, s.C, s.H,
                     s.W, s.OC, s.K, s.stride, s.pad, scratch.data(), slots);
      EXPECT_TRUE(AllClose(dx, gx, 1e-5));
      EXPECT_TRUE(AllClose(dw, gw, 1e-5));
      EXPECT_TRUE(AllClose(db, gb, 1e-5));
      // Null outputs are skipped; the others are unchanged by their absence.
      std::vector<float> dw2 = dw0;
      Conv2dBackward(nullptr, dw2.data(), nullptr, R.data(), x.data(), w.data(), s.B, s.C, s.H, s.W,
                     s.OC, s.K, s.stride, s.pad, scratch.data(), slots);
      EXPECT_EQ(dw2, dw);
      std::vector<float> dx2(x.size(), NAN);
      Conv2dBackward(dx2.data(), nullptr, nullptr, R.data(), x.data(), w.data(), s.B, s.C, s.H, s.W,
                     s.OC, s.K, s.stride, s.pad, scratch.data(), slots);
      EXPECT_EQ(dx2, dx);
    }
  }
}

// The work is split by the scratch's slots, never by the thread count: 1 and 2 threads give
// bit-identical results for the same slots.
TEST(Conv2dTest, ThreadCountIndependentBitExact) {
  const int saved = GetThreads();
  for (const ConvShape& s :
       {ConvShape{8, 16, 14, 14, 32, 3, 1, 1}, ConvShape{5, 8, 15, 13, 16, 3, 2, 1}}) {
    auto x = RandomFloats(size_t(s.B) * s.C * s.H * s.W, 300);
    auto w = RandomFloats(size_t(s.OC) * s.C * s.K * s.K, 301);
    auto b = RandomFloats(s.OC, 302);
    auto R = RandomFloats(size_t(s.B) * s.OC * s.OH() * s.OW(), 303);
    for (int slots : {1, 2, 3}) {
      std::vector<float> out[2], dx[2], dw[2], db[2];
      for (int t = 0; t < 2; ++t) {
        SetThreads(t + 1);
        auto scratch = ConvScratch(s, slots);
        out[t].assign(R.size(), 0.0f);
        dx[t].assign(x.size(), 0.0f);
        dw[t].assign(w.size(), 0.5f);
        db[t].assign(b.size(), 0.5f);
        Conv2dForward(out[t].data(), x.data(), w.data(), b.data(), s.B, s.C, s.H, s.W, s.OC, s.K,
                      s.stride, s.pad, scratch.data(), slots);
        Conv2dBackward(dx[t].data(), dw[t].data(), db[t].data(), R.data(), x.data(), w.data(), s.B,
                       s.C, s.H, s.W, s.OC, s.K, s.stride, s.pad, scratch.data(), slots);
      }
      EXPECT_EQ(out[0], out[1]) << "slots " << slots;
      EXPECT_EQ(dx[0], dx[1]) << "slots " << slots;
      EXPECT_EQ(dw[0], dw[1]) << "slots " << slots;
      EXPECT_EQ(db[0], db[1]) << "slots " << slots;
    }
  }
  SetThreads(saved);
}

// ---- BatchNorm2d --------------------------------------------------------------------------------
void NaiveBatchStats(const Vec& x, int B, int C, int HW, Vec* mean, Vec* var) {
  mean->assign(C, 0.0);
  var->assign(C, 0.0);
  const double n = double(B) * HW;
  for (int c = 0; c < C; ++c) {
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < HW; ++i) (*mean)[c] += x[(b * C + c) * HW + i];
    (*mean)[c] /= n;
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < HW; ++i) {
        const double t = x[(b * C + c) * HW + i] - (*mean)[c];
        (*var)[c] += t * t;
      }
    (*var)[c] /= n;
  }
}

Vec NaiveBatchNorm(const Vec& x, const Vec& w, const Vec& bias, const Vec& mean, const Vec& var,
                   int B, int C, int HW, double eps = 1e-5) {
  Vec out(x.size());
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int i = 0; i < HW; ++i) {
        const size_t at = (size_t(b) * C + c) * HW + i;
        out[at] = (x[at] - mean[c]) / std::sqrt(var[c] + eps) * w[c] + bias[c];
      }
  return out;
}

Vec NaiveBatchNormTrain(const Vec& x, const Vec& w, const Vec& bias, int B, int C, int HW) {
  Vec mean, var;
  NaiveBatchStats(x, B, C, HW, &mean, &var);
  return NaiveBatchNorm(x, w, bias, mean, var, B, C, HW);
}

struct BnShape {
  int B, C, HW;
};

TEST(BatchNorm2dTest, TrainForwardStatsAndRunningUpdateMatchPyTorchFormula) {
  uint32_t seed = 400;
  for (const BnShape& s : {BnShape{2, 3, 5}, BnShape{4, 5, 49}, BnShape{1, 2, 9}}) {
    const size_t n = size_t(s.B) * s.C * s.HW;
    auto x = RandomFloats(n, seed++, -2, 3), w = RandomFloats(s.C, seed++, 0.5, 1.5),
         b = RandomFloats(s.C, seed++);
    auto rm = RandomFloats(s.C, seed++), rv = RandomFloats(s.C, seed++, 0.5, 2);
    const auto rm0 = rm, rv0 = rv;
    std::vector<float> out(n, NAN), mean(s.C, NAN), rstd(s.C, NAN);
    const float momentum = 0.1f;
    BatchNorm2dForwardTrain(out.data(), mean.data(), rstd.data(), rm.data(), rv.data(), x.data(),
                            w.data(), b.data(), s.B, s.C, s.HW, momentum);
    Vec m, v;
    NaiveBatchStats(ToDouble(x), s.B, s.C, s.HW, &m, &v);
    EXPECT_TRUE(AllClose(
        out, NaiveBatchNorm(ToDouble(x), ToDouble(w), ToDouble(b), m, v, s.B, s.C, s.HW), 1e-5));
    Vec rstd_ref(s.C), rm_ref(s.C), rv_ref(s.C);
    const double cnt = double(s.B) * s.HW;
    for (int c = 0; c < s.C; ++c) {
      rstd_ref[c] = 1 / std::sqrt(v[c] + 1e-5);
      // torch.nn.BatchNorm2d: running stats with the UNBIASED batch variance.
      rm_ref[c] = (1 - 0.1) * rm0[c] + 0.1 * m[c];
      rv_ref[c] = (1 - 0.1) * rv0[c] + 0.1 * v[c] * cnt / (cnt - 1);
    }
    EXPECT_TRUE(AllClose(mean, m, 1e-6, 1e-7));
    EXPECT_TRUE(AllClose(rstd, rstd_ref, 1e-6));
    EXPECT_TRUE(AllClose(rm, rm_ref, 1e-6));
    EXPECT_TRUE(AllClose(rv, rv_ref, 1e-6));

    // The stats-only function gives the very mean used above and the biased variance.
    std::vector<float> smean(s.C, NAN), svar(s.C, NAN);
    BatchNorm2dBatchStats(smean.data(), svar.data(), x.data(), s.B, s.C, s.HW);
    EXPECT_EQ(smean, mean);
    EXPECT_TRUE(AllClose(svar, v, 1e-6));
    for (int c = 0; c < s.C; ++c)
      EXPECT_FLOAT_EQ(rstd[c], static_cast<float>(1 / std::sqrt(double{svar[c]} + 1e-5)));

    // Null running stats: not updated, the rest unchanged.
    std::vector<float> out2(n), mean2(s.C), rstd2(s.C);
    BatchNorm2dForwardTrain(out2.data(), mean2.data(), rstd2.data(), nullptr, nullptr, x.data(),
                            w.data(), b.data(), s.B, s.C, s.HW);
    EXPECT_EQ(out2, out);
    EXPECT_EQ(rstd2, rstd);
  }
}

TEST(BatchNorm2dTest, EvalForwardMatchesNaive) {
  const int B = 3, C = 4, HW = 10;
  auto x = RandomFloats(B * C * HW, 410, -2, 2), w = RandomFloats(C, 411, 0.5, 1.5),
       b = RandomFloats(C, 412), rm = RandomFloats(C, 413), rv = RandomFloats(C, 414, 0.1, 3);
  std::vector<float> out(x.size(), NAN);
  BatchNorm2dForwardEval(out.data(), x.data(), w.data(), b.data(), rm.data(), rv.data(), B, C, HW);
  auto ref =
      NaiveBatchNorm(ToDouble(x), ToDouble(w), ToDouble(b), ToDouble(rm), ToDouble(rv), B, C, HW);
  EXPECT_TRUE(AllClose(out, ref, 1e-6));
  std::vector<float> inplace = x;  // out may alias inp
  BatchNorm2dForwardEval(inplace.data(), inplace.data(), w.data(), b.data(), rm.data(), rv.data(),
                         B, C, HW);
  EXPECT_EQ(inplace, out);
}

TEST(BatchNorm2dTest, TrainBackwardMatchesFiniteDifferences) {
  uint32_t seed = 420;
  for (const BnShape& s : {BnShape{2, 3, 5}, BnShape{3, 2, 16}, BnShape{1, 2, 7}}) {
    const size_t n = size_t(s.B) * s.C * s.HW;
    auto x = RandomFloats(n, seed++, -2, 2), w = RandomFloats(s.C, seed++, 0.5, 1.5),
         b = RandomFloats(s.C, seed++), R = RandomFloats(n, seed++);
    std::vector<float> out(n), mean(s.C), rstd(s.C);
    BatchNorm2dForwardTrain(out.data(), mean.data(), rstd.data(), nullptr, nullptr, x.data(),
                            w.data(), b.data(), s.B, s.C, s.HW);
    std::vector<float> dx(n, NAN), dw(s.C, 0.25f), db(s.C, -0.5f);
    BatchNorm2dBackward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                        rstd.data(), s.B, s.C, s.HW);
    const Vec xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b);
    auto gx = NumericalGrad(
        [&](const Vec& v) { return Dot(NaiveBatchNormTrain(v, wd, bd, s.B, s.C, s.HW), R); }, xd);
    auto gw = NumericalGrad(
        [&](const Vec& v) { return Dot(NaiveBatchNormTrain(xd, v, bd, s.B, s.C, s.HW), R); }, wd);
    auto gb = NumericalGrad(
        [&](const Vec& v) { return Dot(NaiveBatchNormTrain(xd, wd, v, s.B, s.C, s.HW), R); }, bd);
    for (auto& g : gw) g += 0.25;  // accumulated
    for (auto& g : gb) g += -0.5;
    EXPECT_TRUE(AllClose(dx, gx, 1e-4));  // written
    EXPECT_TRUE(AllClose(dw, gw, 1e-5));
    EXPECT_TRUE(AllClose(db, gb, 1e-5));
    // dinp may alias dout.
    std::vector<float> inplace = R, dw2(s.C, 0.25f), db2(s.C, -0.5f);
    BatchNorm2dBackward(inplace.data(), dw2.data(), db2.data(), inplace.data(), x.data(), w.data(),
                        mean.data(), rstd.data(), s.B, s.C, s.HW);
    EXPECT_EQ(inplace, dx);
    EXPECT_EQ(dw2, dw);
  }
}

// ---- ReLU ---------------------------------------------------------------------------------------
TEST(ReluTest, ForwardAndBackwardInPlace) {
  const int n = 1001;
  auto x = RandomFloats(n, 500, -1, 1), R = RandomFloats(n, 501);
  x[7] = 0.0f;  // relu'(0) = 0, as PyTorch
  std::vector<float> out(n), dx(n, NAN);
  ReluForward(out.data(), x.data(), n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[i], x[i] > 0 ? x[i] : 0.0f);
  ReluBackward(dx.data(), out.data(), R.data(), n);
  for (int i = 0; i < n; ++i) ASSERT_EQ(dx[i], x[i] > 0 ? R[i] : 0.0f);
  // Against finite differences away from the kink.
  std::vector<float> xs = x;
  for (float& v : xs)
    if (std::abs(v) < 1e-3f) v = 0.5f;
  ReluForward(out.data(), xs.data(), n);
  ReluBackward(dx.data(), out.data(), R.data(), n);
  auto g = NumericalGrad(
      [&](const Vec& v) {
        double s = 0;
        for (int i = 0; i < n; ++i) s += std::max(v[i], 0.0) * R[i];
        return s;
      },
      ToDouble(xs));
  EXPECT_TRUE(AllClose(dx, g, 1e-6));
  // Both in place, as a model runs them.
  std::vector<float> a = xs, d = R;
  ReluForward(a.data(), a.data(), n);
  EXPECT_EQ(a, out);
  ReluBackward(d.data(), a.data(), d.data(), n);
  EXPECT_EQ(d, dx);
}

// ---- max-pool -----------------------------------------------------------------------------------
void NaiveMaxPool(const std::vector<float>& x, int B, int C, int H, int W, std::vector<float>* out,
                  std::vector<int32_t>* arg) {
  const int OH = H / 2, OW = W / 2;
  out->assign(size_t(B) * C * OH * OW, 0);
  arg->assign(out->size(), -1);
  for (int p = 0; p < B * C; ++p)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        float best = -std::numeric_limits<float>::infinity();
        int at = -1;
        for (int di = 0; di < 2; ++di)
          for (int dj = 0; dj < 2; ++dj) {
            const int idx = (2 * oh + di) * W + 2 * ow + dj;
            if (at < 0 || x[size_t(p) * H * W + idx] > best) {
              best = x[size_t(p) * H * W + idx];
              at = idx;
            }
          }
        (*out)[(size_t(p) * OH + oh) * OW + ow] = best;
        (*arg)[(size_t(p) * OH + oh) * OW + ow] = at;
      }
}

TEST(MaxPool2dTest, ForwardWithTiesAndOddSizes) {
  for (auto [B, C, H, W] :
       {std::array{2, 3, 6, 8}, std::array{1, 2, 7, 5}, std::array{3, 1, 3, 3}}) {
    // Values from a small set: many ties inside windows.
    auto r = RandomFloats(size_t(B) * C * H * W, 600 + H);
    std::vector<float> x(r.size());
    for (size_t i = 0; i < r.size(); ++i) x[i] = std::floor(r[i] * 2.0f);  // -2, -1, 0, 1
    const int OH = H / 2, OW = W / 2;
    std::vector<float> out(size_t(B) * C * OH * OW, NAN), ref;
    std::vector<int32_t> arg(out.size(), -7), arg_ref;
    MaxPool2dForward(out.data(), arg.data(), x.data(), B, C, H, W);
    NaiveMaxPool(x, B, C, H, W, &ref, &arg_ref);
    EXPECT_EQ(out, ref);
    EXPECT_EQ(arg, arg_ref);  // the first maximum in row-major window order
  }
  // An all-equal window picks its top-left; a NaN propagates.
  std::vector<float> x = {1, 1, 5,   2,  //
                          1, 1, NAN, 2};
  std::vector<float> out(2);
  std::vector<int32_t> arg(2);
  MaxPool2dForward(out.data(), arg.data(), x.data(), 1, 1, 2, 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(arg[0], 0);
  EXPECT_TRUE(std::isnan(out[1]));
  EXPECT_EQ(arg[1], 6);
}

TEST(MaxPool2dTest, BackwardRoutesToArgmaxIncludingTies) {
  // Ties: the gradient goes to the first maximum only; the dropped odd row/column get zero.
  const int B = 2, C = 2, H = 5, W = 7, OH = 2, OW = 3;
  auto r = RandomFloats(size_t(B) * C * H * W, 610);
  std::vector<float> x(r.size());
  for (size_t i = 0; i < r.size(); ++i) x[i] = std::floor(r[i] * 2.0f);
  std::vector<float> out(size_t(B) * C * OH * OW);
  std::vector<int32_t> arg(out.size());
  MaxPool2dForward(out.data(), arg.data(), x.data(), B, C, H, W);
  auto dy = RandomFloats(out.size(), 611);
  std::vector<float> dx(x.size(), NAN);
  MaxPool2dBackward(dx.data(), dy.data(), arg.data(), B, C, H, W);
  std::vector<float> ref_out;
  std::vector<int32_t> ref_arg;
  NaiveMaxPool(x, B, C, H, W, &ref_out, &ref_arg);
  std::vector<float> expect(x.size(), 0.0f);
  for (int p = 0; p < B * C; ++p)
    for (int i = 0; i < OH * OW; ++i)
      expect[size_t(p) * H * W + ref_arg[p * OH * OW + i]] += dy[p * OH * OW + i];
  EXPECT_EQ(dx, expect);

  // Distinct values: against finite differences of the naive loop.
  auto xs = RandomFloats(x.size(), 612);
  MaxPool2dForward(out.data(), arg.data(), xs.data(), B, C, H, W);
  MaxPool2dBackward(dx.data(), dy.data(), arg.data(), B, C, H, W);
  auto g = NumericalGrad(
      [&](const Vec& v) {
        std::vector<float> o;
        std::vector<int32_t> a;
        NaiveMaxPool(std::vector<float>(v.begin(), v.end()), B, C, H, W, &o, &a);
        double s = 0;
        for (size_t i = 0; i < o.size(); ++i) s += v[size_t(i / (OH * OW)) * H * W + a[i]] * dy[i];
        return s;
      },
      ToDouble(xs));
  EXPECT_TRUE(AllClose(dx, g, 1e-6));
}

// ---- the loss head: ops.h's cross-entropy with V = Vp = 10 classes ------------------------------
TEST(CnnLossTest, CrossEntropyWithTenClassesMatchesNaive) {
  const int N = 6, V = 10;
  auto logits = RandomFloats(N * V, 700, -3, 3);
  std::vector<int32_t> targets = {0, 9, 3, 3, 7, 1};
  std::vector<float> losses(N), lse(N);
  CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, V);
  auto naive = [&](const Vec& l, Vec* per_row) {
    double total = 0;
    for (int n = 0; n < N; ++n) {
      double mx = -1e300, s = 0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, l[n * V + j]);
      for (int j = 0; j < V; ++j) s += std::exp(l[n * V + j] - mx);
      const double loss = std::log(s) + mx - l[n * V + targets[n]];
      if (per_row) per_row->push_back(loss);
      total += loss;
    }
    return total;
  };
  Vec ref;
  naive(ToDouble(logits), &ref);
  EXPECT_TRUE(AllClose(losses, ref, 1e-6, 1e-6));
  const float dloss = 1.0f / N;  // mean over the batch
  std::vector<float> dlogits(N * V, NAN);
  CrossEntropyBackward(dlogits.data(), logits.data(), lse.data(), targets.data(), dloss, N, V, V);
  auto g = NumericalGrad([&](const Vec& l) { return dloss * naive(l, nullptr); }, ToDouble(logits));
  EXPECT_TRUE(AllClose(dlogits, g, 1e-5));
}

// ---- a small network, end to end ---------------------------------------------------------------
// x (B, 2, 6, 6) -> conv3x3 pad 1 (4 channels) -> BN (train) -> ReLU -> max-pool -> (B, 4*3*3)
// -> linear (10) -> cross-entropy, mean over the batch. Every gradient against finite differences
// of the same network in double: checks how the kernels chain (ReLU in place on BN's output, BN's
// backward on the conv output, pool's argmax, the flattened head).
struct NetParams {
  Vec x, cw, cb, bw, bb, lw, lb;
};

constexpr int kB = 3, kC = 2, kH = 6, kW = 6, kOC = 4, kF = kOC * 3 * 3, kClasses = 10;
const std::vector<int32_t> kTargets = {2, 7, 0};

double NaiveNet(const NetParams& p) {
  const ConvShape s{kB, kC, kH, kW, kOC, 3, 1, 1};
  Vec y = NaiveConv(p.x, p.cw, p.cb, s);
  y = NaiveBatchNormTrain(y, p.bw, p.bb, kB, kOC, kH * kW);
  Vec yr(y.size());
  for (size_t i = 0; i < y.size(); ++i) yr[i] = std::max(y[i], 0.0);
  double loss = 0;
  for (int b = 0; b < kB; ++b) {
    Vec feat(kF);
    for (int c = 0; c < kOC; ++c)
      for (int oh = 0; oh < 3; ++oh)
        for (int ow = 0; ow < 3; ++ow) {
          double m = -1e300;
          for (int di = 0; di < 2; ++di)
            for (int dj = 0; dj < 2; ++dj)
              m = std::max(m, yr[((b * kOC + c) * kH + 2 * oh + di) * kW + 2 * ow + dj]);
          feat[(c * 3 + oh) * 3 + ow] = m;
        }
    Vec logits(kClasses);
    double mx = -1e300;
    for (int k = 0; k < kClasses; ++k) {
      logits[k] = p.lb[k];
      for (int f = 0; f < kF; ++f) logits[k] += feat[f] * p.lw[k * kF + f];
      mx = std::max(mx, logits[k]);
    }
    double se = 0;
    for (int k = 0; k < kClasses; ++k) se += std::exp(logits[k] - mx);
    loss += std::log(se) + mx - logits[kTargets[b]];
  }
  return loss / kB;
}

TEST(CnnNetworkTest, ConvBnReluPoolLinearCrossEntropyGradientsMatchFiniteDifferences) {
  auto x = RandomFloats(kB * kC * kH * kW, 800), cw = RandomFloats(kOC * kC * 9, 801, -0.5, 0.5),
       cb = RandomFloats(kOC, 802), bw = RandomFloats(kOC, 803, 0.5, 1.5),
       bb = RandomFloats(kOC, 804), lw = RandomFloats(kClasses * kF, 805),
       lb = RandomFloats(kClasses, 806);
  const int HW = kH * kW, slots = 2;
  std::vector<float> scratch(Conv2dScratchFloats(kC, kH, kW, kOC, 3, 1, 1, slots));
  std::vector<float> conv(kB * kOC * HW), bn(conv.size()), mean(kOC), rstd(kOC);
  std::vector<float> rm(kOC, 0.0f), rv(kOC, 1.0f), pool(kB * kF), logits(kB * kClasses);
  std::vector<int32_t> arg(pool.size());
  std::vector<float> losses(kB), lse(kB);
  Conv2dForward(conv.data(), x.data(), cw.data(), cb.data(), kB, kC, kH, kW, kOC, 3, 1, 1,
                scratch.data(), slots);
  BatchNorm2dForwardTrain(bn.data(), mean.data(), rstd.data(), rm.data(), rv.data(), conv.data(),
                          bw.data(), bb.data(), kB, kOC, HW);
  ReluForward(bn.data(), bn.data(), bn.size());
  MaxPool2dForward(pool.data(), arg.data(), bn.data(), kB, kOC, kH, kW);
  MatmulForward(logits.data(), nullptr, pool.data(), lw.data(), lb.data(), kB, kF, kClasses);
  CrossEntropyForward(losses.data(), lse.data(), logits.data(), kTargets.data(), kB, kClasses,
                      kClasses);
  NetParams p{ToDouble(x),  ToDouble(cw), ToDouble(cb), ToDouble(bw),
              ToDouble(bb), ToDouble(lw), ToDouble(lb)};
  double loss = 0;
  for (float l : losses) loss += l;
  EXPECT_NEAR(loss / kB, NaiveNet(p), 1e-5);

  std::vector<float> dx(x.size()), dcw(cw.size(), 0.0f), dcb(cb.size(), 0.0f), dbw(bw.size(), 0.0f),
      dbb(bb.size(), 0.0f), dlw(lw.size(), 0.0f), dlb(lb.size(), 0.0f), dpool(pool.size()),
      dbn(bn.size()), dconv(conv.size());
  CrossEntropyBackward(logits.data(), logits.data(), lse.data(), kTargets.data(), 1.0f / kB, kB,
                       kClasses, kClasses);
  MatmulBackward(dpool.data(), dlw.data(), dlb.data(), logits.data(), pool.data(), lw.data(), kB,
                 kF, kClasses);
  MaxPool2dBackward(dbn.data(), dpool.data(), arg.data(), kB, kOC, kH, kW);
  ReluBackward(dbn.data(), bn.data(), dbn.data(), dbn.size());
  BatchNorm2dBackward(dconv.data(), dbw.data(), dbb.data(), dbn.data(), conv.data(), bw.data(),
                      mean.data(), rstd.data(), kB, kOC, HW);
  Conv2dBackward(dx.data(), dcw.data(), dcb.data(), dconv.data(), x.data(), cw.data(), kB, kC, kH,
                 kW, kOC, 3, 1, 1, scratch.data(), slots);

  auto grad = [&](Vec NetParams::*field) {
    return NumericalGrad(
        [&](const Vec& v) {
          NetParams q = p;
          q.*field = v;
          return NaiveNet(q);
        },
        p.*field);
  };
  EXPECT_TRUE(AllClose(dx, grad(&NetParams::x), 1e-4));
  EXPECT_TRUE(AllClose(dcw, grad(&NetParams::cw), 1e-4));
  EXPECT_TRUE(AllClose(dcb, grad(&NetParams::cb), 0, 1e-5));  // BN cancels the conv bias: ~0
  EXPECT_TRUE(AllClose(dbw, grad(&NetParams::bw), 1e-4));
  EXPECT_TRUE(AllClose(dbb, grad(&NetParams::bb), 1e-4));
  EXPECT_TRUE(AllClose(dlw, grad(&NetParams::lw), 1e-4));
  EXPECT_TRUE(AllClose(dlb, grad(&NetParams::lb), 1e-4));
}

// ---- the same kind of network against PyTorch ---------------------------------------------------
// tests/golden/make_cnn_kernels_golden.py: nn.Conv2d, nn.BatchNorm2d (train, then eval with the
// updated running statistics), ReLU, nn.MaxPool2d(return_indices), a stride-2 conv, nn.Linear and
// F.cross_entropy in float64. Outputs and gradients within 1e-5 / 1e-4 of each tensor's max.
std::map<std::string, std::vector<double>> ReadCnnGolden() {
  const char* env = std::getenv("MEMTRAIN_SOURCE_DIR");
  const std::string path =
      std::string(env ? env : MEMTRAIN_SOURCE_DIR) + "/tests/golden/data/cnn_kernels_golden.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::map<std::string, std::vector<double>> out;
  if (!in.good()) return out;
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const auto& [name, t] : j.items()) out[name] = t.at("data").get<std::vector<double>>();
  return out;
}

std::vector<float> ToFloat(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

TEST(CnnGoldenTest, SmallNetworkMatchesPyTorch) {
  auto g = ReadCnnGolden();
  ASSERT_FALSE(g.empty());
  constexpr int B = 4, C = 2, H = 9, W = 8, C1 = 3, C2 = 5, PH = 4, PW = 4, OH2 = 2, OW2 = 2,
                F = C2 * OH2 * OW2, K = 10;
  const int slots = 3;
  auto x = ToFloat(g.at("x")), w1 = ToFloat(g.at("conv1.weight")), b1 = ToFloat(g.at("conv1.bias")),
       bw = ToFloat(g.at("bn.weight")), bb = ToFloat(g.at("bn.bias")),
       rm = ToFloat(g.at("bn.running_mean0")), rv = ToFloat(g.at("bn.running_var0")),
       w2 = ToFloat(g.at("conv2.weight")), b2 = ToFloat(g.at("conv2.bias")),
       lw = ToFloat(g.at("head.weight")), lb = ToFloat(g.at("head.bias"));
  std::vector<int32_t> targets(g.at("targets").begin(), g.at("targets").end());
  std::vector<float> scratch(std::max(Conv2dScratchFloats(C, H, W, C1, 3, 1, 1, slots),
                                      Conv2dScratchFloats(C1, PH, PW, C2, 3, 2, 1, slots)));

  std::vector<float> c1(B * C1 * H * W), a1(c1.size()), mean(C1), rstd(C1), ev(c1.size());
  std::vector<float> p1(B * C1 * PH * PW), c2(B * F), logits(B * K), losses(B), lse(B);
  std::vector<int32_t> idx(p1.size());
  Conv2dForward(c1.data(), x.data(), w1.data(), b1.data(), B, C, H, W, C1, 3, 1, 1, scratch.data(),
                slots);
  EXPECT_TRUE(AllClose(c1, g.at("conv1.out"), 1e-5));
  BatchNorm2dForwardTrain(a1.data(), mean.data(), rstd.data(), rm.data(), rv.data(), c1.data(),
                          bw.data(), bb.data(), B, C1, H * W, 0.1f, 1e-5f);
  EXPECT_TRUE(AllClose(a1, g.at("bn.out"), 1e-5));
  EXPECT_TRUE(AllClose(rm, g.at("bn.running_mean1"), 1e-5));
  EXPECT_TRUE(AllClose(rv, g.at("bn.running_var1"), 1e-5));
  BatchNorm2dForwardEval(ev.data(), c1.data(), bw.data(), bb.data(), rm.data(), rv.data(), B, C1,
                         H * W, 1e-5f);
  EXPECT_TRUE(AllClose(ev, g.at("bn.eval_out"), 1e-5));
  ReluForward(a1.data(), a1.data(), a1.size());
  MaxPool2dForward(p1.data(), idx.data(), a1.data(), B, C1, H, W);
  EXPECT_TRUE(AllClose(p1, g.at("pool.out"), 1e-5));
  EXPECT_EQ(idx, std::vector<int32_t>(g.at("pool.indices").begin(), g.at("pool.indices").end()));
  Conv2dForward(c2.data(), p1.data(), w2.data(), b2.data(), B, C1, PH, PW, C2, 3, 2, 1,
                scratch.data(), slots);
  EXPECT_TRUE(AllClose(c2, g.at("conv2.out"), 1e-5));
  ReluForward(c2.data(), c2.data(), c2.size());
  MatmulForward(logits.data(), nullptr, c2.data(), lw.data(), lb.data(), B, F, K);
  EXPECT_TRUE(AllClose(logits, g.at("logits"), 1e-5));
  CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), B, K, K);
  double loss = 0;
  for (float l : losses) loss += l;
  EXPECT_NEAR(loss / B, g.at("loss")[0], 1e-5);

  std::vector<float> dx(x.size()), dw1(w1.size(), 0.0f), db1(b1.size(), 0.0f), dbw(C1, 0.0f),
      dbb(C1, 0.0f), dw2(w2.size(), 0.0f), db2(b2.size(), 0.0f), dlw(lw.size(), 0.0f),
      dlb(lb.size(), 0.0f), dc2(c2.size()), dp1(p1.size()), da1(a1.size()), dc1(c1.size());
  CrossEntropyBackward(logits.data(), logits.data(), lse.data(), targets.data(), 1.0f / B, B, K, K);
  MatmulBackward(dc2.data(), dlw.data(), dlb.data(), logits.data(), c2.data(), lw.data(), B, F, K);
  ReluBackward(dc2.data(), c2.data(), dc2.data(), dc2.size());
  Conv2dBackward(dp1.data(), dw2.data(), db2.data(), dc2.data(), p1.data(), w2.data(), B, C1, PH,
                 PW, C2, 3, 2, 1, scratch.data(), slots);
  MaxPool2dBackward(da1.data(), dp1.data(), idx.data(), B, C1, H, W);
  ReluBackward(da1.data(), a1.data(), da1.data(), da1.size());
  BatchNorm2dBackward(dc1.data(), dbw.data(), dbb.data(), da1.data(), c1.data(), bw.data(),
                      mean.data(), rstd.data(), B, C1, H * W);
  Conv2dBackward(dx.data(), dw1.data(), db1.data(), dc1.data(), x.data(), w1.data(), B, C, H, W, C1,
                 3, 1, 1, scratch.data(), slots);
  EXPECT_TRUE(AllClose(dlw, g.at("grad.head.weight"), 1e-4));
  EXPECT_TRUE(AllClose(dlb, g.at("grad.head.bias"), 1e-4));
  EXPECT_TRUE(AllClose(dw2, g.at("grad.conv2.weight"), 1e-4));
  EXPECT_TRUE(AllClose(db2, g.at("grad.conv2.bias"), 1e-4));
  EXPECT_TRUE(AllClose(dbw, g.at("grad.bn.weight"), 1e-4));
  EXPECT_TRUE(AllClose(dbb, g.at("grad.bn.bias"), 1e-4));
  EXPECT_TRUE(AllClose(dw1, g.at("grad.conv1.weight"), 1e-4));
  // BN cancels conv1's bias: PyTorch's gradient is rounding noise, so compare absolutely.
  EXPECT_TRUE(AllClose(db1, g.at("grad.conv1.bias"), 0, 1e-6));
  EXPECT_TRUE(AllClose(dx, g.at("grad.x"), 1e-4));
}

}  // namespace
}  // namespace memtrain::core::cpu
