// Tiled online-softmax attention against a naive double-precision reference that materialises
// the full T x T score matrix with an ordinary softmax, and its backward against finite
// differences (small shapes) and against the reference's analytic gradient in double (larger
// shapes). The kernel's tiles are 96 x 96 (query x key): the shapes cover one tile, several, a
// partial last tile, a single token, head sizes that are and are not multiples of 8 (operands
// read in place or through padded buffers), B > 1, and both backward schedules.
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

std::vector<double> NaiveAttention(const std::vector<double>& qkv, int B, int T, int C, int NH,
                                   std::vector<double>* lse = nullptr) {
  const int HS = C / NH;
  std::vector<double> out(B * T * C, 0.0);
  std::vector<double> p(T);
  if (lse != nullptr) lse->assign(B * NH * T, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        const double* q = &qkv[(b * T + i) * 3 * C + h * HS];
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[(b * T + j) * 3 * C + C + h * HS];
          double s = 0;
          for (int d = 0; d < HS; ++d) s += q[d] * k[d];
          p[j] = s / std::sqrt(double(HS));
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        if (lse != nullptr) (*lse)[(b * NH + h) * T + i] = mx + std::log(sum);
        for (int j = 0; j <= i; ++j) {
          const double* v = &qkv[(b * T + j) * 3 * C + 2 * C + h * HS];
          for (int d = 0; d < HS; ++d) out[(b * T + i) * C + h * HS + d] += p[j] / sum * v[d];
        }
      }
  return out;
}

// The analytic gradient of sum(out * dout) with respect to qkv, in double.
std::vector<double> NaiveAttentionBackward(const std::vector<double>& qkv,
                                           const std::vector<double>& dout, int B, int T, int C,
                                           int NH) {
  const int HS = C / NH;
  const double scale = 1.0 / std::sqrt(double(HS));
  std::vector<double> dqkv(B * T * 3 * C, 0.0);
  std::vector<double> p(T), dp(T);
  auto at = [&](int b, int t, int part, int h) { return (b * T + t) * 3 * C + part * C + h * HS; };
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i) {
        const double* q = &qkv[at(b, i, 0, h)];
        const double* g = &dout[(b * T + i) * C + h * HS];
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[at(b, j, 1, h)];
          double s = 0;
          for (int d = 0; d < HS; ++d) s += q[d] * k[d];
          p[j] = s * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        double D = 0;
        for (int j = 0; j <= i; ++j) {
          p[j] /= sum;
          const double* v = &qkv[at(b, j, 2, h)];
          dp[j] = 0;
          for (int d = 0; d < HS; ++d) dp[j] += g[d] * v[d];
          D += p[j] * dp[j];
        }
        for (int j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - D) * scale;
          const double* k = &qkv[at(b, j, 1, h)];
          for (int d = 0; d < HS; ++d) {
            dqkv[at(b, i, 0, h) + d] += ds * k[d];
            dqkv[at(b, j, 1, h) + d] += ds * q[d];
            dqkv[at(b, j, 2, h) + d] += p[j] * g[d];
          }
        }
      }
  return dqkv;
}

struct Shape4 {
  int B, T, C, NH;
};

class AttentionTest : public ::testing::TestWithParam<Shape4> {};

TEST_P(AttentionTest, ForwardMatchesNaiveAndBackwardMatchesFiniteDifferences) {
  const auto [B, T, C, NH] = GetParam();
  auto qkv = RandomFloats(B * T * 3 * C, 21, -2, 2);
  auto R = RandomFloats(B * T * C, 22);
  std::vector<float> out(B * T * C), lse(B * NH * T), dqkv(B * T * 3 * C, 123.0f);
  AttentionForward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  EXPECT_TRUE(AllClose(out, NaiveAttention(ToDouble(qkv), B, T, C, NH), 1e-5));

  auto g = NumericalGrad(
      [&](const std::vector<double>& x) {
        auto o = NaiveAttention(x, B, T, C, NH);
        double s = 0;
        for (size_t i = 0; i < o.size(); ++i) s += o[i] * R[i];
        return s;
      },
      ToDouble(qkv));
  // Both backward schedules: one task per (batch, head) when there are at least as many pairs as
  // threads, per-tile passes when there are fewer.
  const int saved = core::GetThreads();
  for (int threads : {1, 64}) {
    core::SetThreads(threads);
    std::fill(dqkv.begin(), dqkv.end(), 123.0f);
    AttentionBackward(dqkv.data(), R.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
    EXPECT_TRUE(AllClose(dqkv, g, 1e-4)) << threads << " threads";
  }
  core::SetThreads(saved);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape4{1, 70, 8, 2},     // one partial tile
                                           Shape4{2, 33, 12, 3},    // B > 1, odd head size 4
                                           Shape4{3, 1, 8, 2},      // a single token
                                           Shape4{1, 130, 4, 1},    // 2 tiles, 1 head
                                           Shape4{1, 197, 2, 1}));  // 3 tiles, the last partial

// Larger shapes: forward (out and lse) against the reference, backward against its analytic
// gradient in double, in both backward schedules.
struct Shape {
  int B, T, NH, HS;
};

class AttentionShapeTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionShapeTest, MatchesDoubleReference) {
  const auto [B, T, NH, HS] = GetParam();
  const int C = NH * HS;
  auto qkv = RandomFloats(B * T * 3 * C, 31, -2, 2);
  auto dout = RandomFloats(B * T * C, 32);
  std::vector<float> out(B * T * C, 7.0f), lse(B * NH * T, 7.0f), dqkv(B * T * 3 * C);
  AttentionForward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  std::vector<double> ref_lse;
  EXPECT_TRUE(AllClose(out, NaiveAttention(ToDouble(qkv), B, T, C, NH, &ref_lse), 1e-5));
  EXPECT_TRUE(AllClose(lse, ref_lse, 1e-6));

  const auto ref = NaiveAttentionBackward(ToDouble(qkv), ToDouble(dout), B, T, C, NH);
  const int saved = core::GetThreads();
  for (int threads : {1, 64}) {
    core::SetThreads(threads);
    std::fill(dqkv.begin(), dqkv.end(), 123.0f);
    AttentionBackward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T, C, NH);
    EXPECT_TRUE(AllClose(dqkv, ref, 1e-5)) << threads << " threads";
  }
  core::SetThreads(saved);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionShapeTest,
                         ::testing::Values(Shape{1, 130, 2, 16},    // T not a multiple of 96
                                           Shape{2, 1, 6, 64},      // a single token, B = 2
                                           Shape{1, 192, 2, 64},    // two full tiles (in place)
                                           Shape{1, 257, 2, 64},    // 2 full tiles + 65 rows
                                           Shape{2, 257, 6, 64},    // B = 2, NH = 6
                                           Shape{2, 130, 6, 16},    // HS 16
                                           Shape{1, 200, 2, 128},   // HS 128
                                           Shape{1, 193, 3, 12}));  // HS not a multiple of 8

TEST(AttentionLongTest, LongSequenceForwardMatchesNaive) {
  const int B = 1, T = 517, C = 32, NH = 2;
  auto qkv = RandomFloats(B * T * 3 * C, 23, -3, 3);
  std::vector<float> out(B * T * C), lse(B * NH * T);
  AttentionForward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  EXPECT_TRUE(AllClose(out, NaiveAttention(ToDouble(qkv), B, T, C, NH), 1e-5));
}

TEST(AttentionLongTest, ResultDoesNotDependOnThreadCount) {
  const int B = 2, T = 100, C = 16, NH = 2;
  auto qkv = RandomFloats(B * T * 3 * C, 24);
  auto R = RandomFloats(B * T * C, 25);
  std::vector<float> o1(B * T * C), o2(B * T * C), l1(B * NH * T), l2(B * NH * T);
  std::vector<float> d1(B * T * 3 * C), d2(B * T * 3 * C);
  const int saved = core::GetThreads();
  core::SetThreads(1);
  AttentionForward(o1.data(), l1.data(), qkv.data(), B, T, C, NH);
  AttentionBackward(d1.data(), R.data(), qkv.data(), o1.data(), l1.data(), B, T, C, NH);
  core::SetThreads(std::max(2, saved));
  AttentionForward(o2.data(), l2.data(), qkv.data(), B, T, C, NH);
  AttentionBackward(d2.data(), R.data(), qkv.data(), o2.data(), l2.data(), B, T, C, NH);
  core::SetThreads(saved);
  EXPECT_EQ(o1, o2);
  EXPECT_EQ(d1, d2);
}

// 1 thread takes the one-task-per-head backward and groups of query tiles in the forward, 8
// threads the per-tile backward passes (2 heads) and one query tile per forward task: the
// schedules must give the same bits, for full tiles, a partial last tile and a partial group.
TEST(AttentionLongTest, SchedulesGiveTheSameBits) {
  for (const int HS : {64, 12}) {
    const int B = 1, T = 800, NH = 2, C = NH * HS;
    auto qkv = RandomFloats(B * T * 3 * C, 26, -2, 2);
    auto R = RandomFloats(B * T * C, 27);
    std::vector<float> o1(B * T * C), o2(B * T * C), l1(B * NH * T), l2(B * NH * T);
    std::vector<float> d1(B * T * 3 * C), d2(B * T * 3 * C);
    const int saved = core::GetThreads();
    core::SetThreads(1);
    AttentionForward(o1.data(), l1.data(), qkv.data(), B, T, C, NH);
    AttentionBackward(d1.data(), R.data(), qkv.data(), o1.data(), l1.data(), B, T, C, NH);
    core::SetThreads(8);
    AttentionForward(o2.data(), l2.data(), qkv.data(), B, T, C, NH);
    AttentionBackward(d2.data(), R.data(), qkv.data(), o1.data(), l1.data(), B, T, C, NH);
    core::SetThreads(saved);
    EXPECT_EQ(o1, o2) << "HS " << HS;
    EXPECT_EQ(l1, l2) << "HS " << HS;
    EXPECT_EQ(d1, d2) << "HS " << HS;
  }
}

}  // namespace
}  // namespace memtrain::core::cpu
