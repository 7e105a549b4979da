// CPU kernels against independent references: naive double-precision loops for the forward pass,
// central finite differences of those loops (in double) for the backward pass.
#include <cmath>
#include <vector>

#include "core/kernels/cpu/ops.h"
#include "core/threads.h"
#include "tests/core/test_util.h"

namespace memtrain::core::cpu {
namespace {

using memtrain::testing::AllClose;
using memtrain::testing::NumericalGrad;
using memtrain::testing::RandomFloats;
using memtrain::testing::ToDouble;

double Dot(const std::vector<double>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- matmul -------------------------------------------------------------------------------------
std::vector<double> NaiveMatmul(const std::vector<double>& inp, const std::vector<double>& w,
                                const std::vector<double>& bias, const std::vector<double>& res,
                                int N, int C, int OC) {
  std::vector<double> out(N * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = (bias.empty() ? 0 : bias[o]) + (res.empty() ? 0 : res[n * OC + o]);
      for (int c = 0; c < C; ++c) s += inp[n * C + c] * w[o * C + c];
      out[n * OC + o] = s;
    }
  return out;
}

TEST(MatmulTest, ForwardWithBiasAndResidualMatchesNaive) {
  const int N = 13, C = 17, OC = 11;
  auto inp = RandomFloats(N * C, 1), w = RandomFloats(OC * C, 2), b = RandomFloats(OC, 3);
  auto res = RandomFloats(N * OC, 4);
  std::vector<float> out(N * OC);
  MatmulForward(out.data(), res.data(), inp.data(), w.data(), b.data(), N, C, OC);
  EXPECT_TRUE(AllClose(
      out, NaiveMatmul(ToDouble(inp), ToDouble(w), ToDouble(b), ToDouble(res), N, C, OC), 1e-5));
  MatmulForward(out.data(), nullptr, inp.data(), w.data(), nullptr, N, C, OC);
  EXPECT_TRUE(AllClose(out, NaiveMatmul(ToDouble(inp), ToDouble(w), {}, {}, N, C, OC), 1e-5));
}

TEST(MatmulTest, BackwardMatchesFiniteDifferences) {
  const int N = 7, C = 9, OC = 5;
  auto inp = RandomFloats(N * C, 1), w = RandomFloats(OC * C, 2), b = RandomFloats(OC, 3);
  auto R = RandomFloats(N * OC, 4);  // loss = sum(out * R), so dout = R
  std::vector<float> dinp(N * C, 0.5f), dw(OC * C, 0.25f), db(OC, -1.0f);
  const std::vector<float> dw0 = dw, db0 = db;
  MatmulBackward(dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(), N, C, OC);
  auto f_inp = [&](const std::vector<double>& x) {
    return Dot(NaiveMatmul(x, ToDouble(w), ToDouble(b), {}, N, C, OC), R);
  };
  auto f_w = [&](const std::vector<double>& x) {
    return Dot(NaiveMatmul(ToDouble(inp), x, ToDouble(b), {}, N, C, OC), R);
  };
  auto f_b = [&](const std::vector<double>& x) {
    return Dot(NaiveMatmul(ToDouble(inp), ToDouble(w), x, {}, N, C, OC), R);
  };
  EXPECT_TRUE(AllClose(dinp, NumericalGrad(f_inp, ToDouble(inp)), 1e-5));  // written
  auto gw = NumericalGrad(f_w, ToDouble(w)), gb = NumericalGrad(f_b, ToDouble(b));
  for (size_t i = 0; i < gw.size(); ++i) gw[i] += dw0[i];  // accumulated
  for (size_t i = 0; i < gb.size(); ++i) gb[i] += db0[i];
  EXPECT_TRUE(AllClose(dw, gw, 1e-5));
  EXPECT_TRUE(AllClose(db, gb, 1e-5));
  // accumulate_dinp adds instead of overwriting.
  std::vector<float> dinp2(N * C, 1.0f);
  MatmulBackward(dinp2.data(), dw.data(), nullptr, R.data(), inp.data(), w.data(), N, C, OC, true);
  for (int i = 0; i < N * C; ++i) EXPECT_NEAR(dinp2[i], dinp[i] + 1.0f, 1e-5);
}

// The fixed-tile pair: the same products as the naive loops, and the same bits on 1 and 2
// threads. Ragged shapes (4 row tiles, the last of 4 rows; 7 column tiles, the last of 64), each
// tile above OpenBLAS's threshold for threading (about 262k multiply-adds), so a tile that
// OpenBLAS threaded would show here too.
TEST(MatmulTest, FixedTilesMatchNaiveAndAreThreadCountFree) {
  const int N = 100, C = 1600, OC = 12;
  auto inp = RandomFloats(N * C, 1), w = RandomFloats(OC * C, 2), b = RandomFloats(OC, 3);
  auto R = RandomFloats(N * OC, 4);
  std::vector<double> want_dinp(N * C, 0.0), want_dw(OC * C), want_db(OC);
  for (int o = 0; o < OC; ++o) {
    want_db[o] = -1.0;
    for (int n = 0; n < N; ++n) want_db[o] += R[n * OC + o];
    for (int c = 0; c < C; ++c) {
      want_dw[o * C + c] = 0.25;
      for (int n = 0; n < N; ++n) want_dw[o * C + c] += double(R[n * OC + o]) * inp[n * C + c];
    }
  }
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int o = 0; o < OC; ++o) want_dinp[n * C + c] += double(R[n * OC + o]) * w[o * C + c];
  const int saved = GetThreads();
  std::vector<float> out[2], dinp[2], dw[2], db[2];
  for (int t = 0; t < 2; ++t) {
    SetThreads(t + 1);
    out[t].assign(N * OC, 7.0f);
    dinp[t].assign(N * C, 7.0f);  // written, not added
    dw[t].assign(OC * C, 0.25f);
    db[t].assign(OC, -1.0f);
    MatmulForwardFixed(out[t].data(), inp.data(), w.data(), b.data(), N, C, OC);
    MatmulBackwardFixed(dinp[t].data(), dw[t].data(), db[t].data(), R.data(), inp.data(), w.data(),
                        N, C, OC);
  }
  SetThreads(saved);
  EXPECT_TRUE(
      AllClose(out[0], NaiveMatmul(ToDouble(inp), ToDouble(w), ToDouble(b), {}, N, C, OC), 1e-4));
  EXPECT_TRUE(AllClose(dinp[0], want_dinp, 1e-4));
  EXPECT_TRUE(AllClose(dw[0], want_dw, 1e-4));
  EXPECT_TRUE(AllClose(db[0], want_db, 1e-4));
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(dinp[0], dinp[1]);
  EXPECT_EQ(dw[0], dw[1]);
  EXPECT_EQ(db[0], db[1]);
  // Without bias the output is written, not seeded.
  std::vector<float> nb(N * OC, 7.0f);
  MatmulForwardFixed(nb.data(), inp.data(), w.data(), nullptr, N, C, OC);
  EXPECT_TRUE(AllClose(nb, NaiveMatmul(ToDouble(inp), ToDouble(w), {}, {}, N, C, OC), 1e-4));
}

// ---- LayerNorm
// ------------------------------------------------------------------------------------
std::vector<double> NaiveLayerNorm(const std::vector<double>& x, const std::vector<double>& w,
                                   const std::vector<double>& b, int N, int C) {
  std::vector<double> out(N * C);
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += (x[n * C + c] - m) * (x[n * C + c] - m);
    v /= C;
    for (int c = 0; c < C; ++c)
      out[n * C + c] = (x[n * C + c] - m) / std::sqrt(v + 1e-5) * w[c] + b[c];
  }
  return out;
}

TEST(LayerNormTest, ForwardAndBackwardMatchReference) {
  const int N = 6, C = 70;  // C > 64 exercises two column slices in the weight-gradient pass
  auto x = RandomFloats(N * C, 5, -2, 2), w = RandomFloats(C, 6, 0.5, 1.5), b = RandomFloats(C, 7);
  auto R = RandomFloats(N * C, 8);
  std::vector<float> out(N * C), mean(N), rstd(N);
  LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  EXPECT_TRUE(AllClose(out, NaiveLayerNorm(ToDouble(x), ToDouble(w), ToDouble(b), N, C), 1e-5));

  std::vector<float> dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  LayerNormBackward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                    rstd.data(), N, C);
  auto gx = NumericalGrad(
      [&](const std::vector<double>& v) {
        return Dot(NaiveLayerNorm(v, ToDouble(w), ToDouble(b), N, C), R);
      },
      ToDouble(x));
  auto gw = NumericalGrad(
      [&](const std::vector<double>& v) {
        return Dot(NaiveLayerNorm(ToDouble(x), v, ToDouble(b), N, C), R);
      },
      ToDouble(w));
  auto gb = NumericalGrad(
      [&](const std::vector<double>& v) {
        return Dot(NaiveLayerNorm(ToDouble(x), ToDouble(w), v, N, C), R);
      },
      ToDouble(b));
  EXPECT_TRUE(AllClose(dx, gx, 1e-4));
  EXPECT_TRUE(AllClose(dw, gw, 1e-4));
  EXPECT_TRUE(AllClose(db, gb, 1e-4));
}

// ---- GELU
// -------------------------------------------------------------------------------------------
double NaiveGelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

TEST(GeluTest, ForwardAndBackwardMatchReference) {
  const int n = 301;
  auto x = RandomFloats(n, 9, -5, 5), R = RandomFloats(n, 10);
  std::vector<float> out(n), dx(n);
  GeluForward(out.data(), x.data(), n);
  std::vector<double> ref(n);
  for (int i = 0; i < n; ++i) ref[i] = NaiveGelu(x[i]);
  EXPECT_TRUE(AllClose(out, ref, 1e-6));
  GeluBackward(dx.data(), x.data(), R.data(), n);
  auto g = NumericalGrad(
      [&](const std::vector<double>& v) {
        double s = 0;
        for (int i = 0; i < n; ++i) s += NaiveGelu(v[i]) * R[i];
        return s;
      },
      ToDouble(x));
  EXPECT_TRUE(AllClose(dx, g, 1e-5));
  // In place (dinp aliases dout), as the model uses it.
  std::vector<float> inplace = R;
  GeluBackward(inplace.data(), x.data(), inplace.data(), n);
  EXPECT_EQ(inplace, dx);
}

// ---- softmax + cross-entropy
// ---------------------------------------------------------------------
double NaiveCrossEntropy(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                         int N, int V, int Vp, std::vector<double>* losses = nullptr) {
  double total = 0;
  for (int n = 0; n < N; ++n) {
    double mx = -1e300, s = 0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, logits[n * Vp + j]);
    for (int j = 0; j < V; ++j) s += std::exp(logits[n * Vp + j] - mx);
    double l = targets[n] < 0 ? 0 : std::log(s) + mx - logits[n * Vp + targets[n]];
    if (losses) losses->push_back(l);
    total += l;
  }
  return total;
}

TEST(CrossEntropyTest, ForwardAndBackwardWithPaddingAndIgnoredTargets) {
  const int N = 5, V = 37, Vp = 48;
  auto logits = RandomFloats(N * Vp, 11, -4, 4);
  std::vector<int32_t> targets = {3, 36, -1, 0, 17};
  std::vector<float> losses(N), lse(N);
  CrossEntropyForward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
  std::vector<double> ref;
  NaiveCrossEntropy(ToDouble(logits), targets, N, V, Vp, &ref);
  EXPECT_TRUE(AllClose(losses, ref, 1e-6, 1e-6));

  const float dloss = 0.25f;
  std::vector<float> dlogits = logits;  // in place, as the model does it
  CrossEntropyBackward(dlogits.data(), dlogits.data(), lse.data(), targets.data(), dloss, N, V, Vp);
  auto g = NumericalGrad(
      [&](const std::vector<double>& v) { return dloss * NaiveCrossEntropy(v, targets, N, V, Vp); },
      ToDouble(logits));
  EXPECT_TRUE(AllClose(dlogits, g, 1e-5));
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) EXPECT_EQ(dlogits[n * Vp + j], 0.0f);
}

// ---- embedding, residual
// ---------------------------------------------------------------------------
TEST(EmbeddingTest, ForwardAndBackwardWithRepeatedTokensAndOffset) {
  const int B = 2, T = 5, C = 70, V = 6, maxT = 9, off = 3;
  auto wte = RandomFloats(V * C, 12), wpe = RandomFloats(maxT * C, 13),
       R = RandomFloats(B * T * C, 14);
  std::vector<int32_t> tok = {1, 1, 5, 0, 1, 2, 2, 3, 5, 1};
  std::vector<float> out(B * T * C);
  EmbeddingForward(out.data(), tok.data(), wte.data(), wpe.data(), B, T, C, off);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c)
        ASSERT_EQ(out[(b * T + t) * C + c], wte[tok[b * T + t] * C + c] + wpe[(off + t) * C + c]);
  auto f = [&](const std::vector<double>& e, const std::vector<double>& p) {
    double s = 0;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int c = 0; c < C; ++c)
          s += (e[tok[b * T + t] * C + c] + p[(off + t) * C + c]) * R[(b * T + t) * C + c];
    return s;
  };
  std::vector<float> dwte(V * C, 0.0f), dwpe(maxT * C, 0.0f);
  EmbeddingBackward(dwte.data(), dwpe.data(), R.data(), tok.data(), B, T, C, off);
  EXPECT_TRUE(
      AllClose(dwte,
               NumericalGrad([&](const std::vector<double>& e) { return f(e, ToDouble(wpe)); },
                             ToDouble(wte)),
               1e-6));
  EXPECT_TRUE(
      AllClose(dwpe,
               NumericalGrad([&](const std::vector<double>& p) { return f(ToDouble(wte), p); },
                             ToDouble(wpe)),
               1e-6));
}

TEST(ResidualTest, ForwardAndAccumulate) {
  auto a = RandomFloats(1000, 15), b = RandomFloats(1000, 16);
  std::vector<float> out(1000);
  ResidualForward(out.data(), a.data(), b.data(), 1000);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  AddInPlace(out.data(), a.data(), 1000);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(out[i], (a[i] + b[i]) + a[i]);
}

}  // namespace
}  // namespace memtrain::core::cpu
