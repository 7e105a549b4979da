// Tiled online-softmax attention against a naive double-precision reference that materialises
// the full T x T score matrix with an ordinary softmax. Shapes are chosen so several query tiles
// (32) and key tiles (64) and a partial last tile are exercised.
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

std::vector<double> NaiveAttention(const std::vector<double>& qkv, int B, int T, int C, int NH) {
  const int HS = C / NH;
  std::vector<double> out(B * T * C, 0.0);
  std::vector<double> p(T);
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
        for (int j = 0; j <= i; ++j) {
          const double* v = &qkv[(b * T + j) * 3 * C + 2 * C + h * HS];
          for (int d = 0; d < HS; ++d) out[(b * T + i) * C + h * HS + d] += p[j] / sum * v[d];
        }
      }
  return out;
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
                         ::testing::Values(Shape4{1, 70, 8, 2},     // 3 query tiles, 2 key tiles
                                           Shape4{2, 33, 12, 3},    // B > 1, odd head size 4
                                           Shape4{3, 1, 8, 2},      // a single token
                                           Shape4{1, 130, 4, 1}));  // 3 key tiles, 1 head

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

}  // namespace
}  // namespace memtrain::core::cpu
