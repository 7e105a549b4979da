#include "core/philox.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/threads.h"

namespace memtrain::core {
namespace {

// Known-answer vectors of Random123 (kat_vectors, philox4x32 10).
TEST(PhiloxTest, KnownAnswerVectors) {
  EXPECT_EQ(Philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (PhiloxCounter{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(
      Philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
      (PhiloxCounter{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(
      Philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (PhiloxCounter{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

// The double-precision Box-Muller value of lane `lane` of a counter block, from libm.
double ReferenceNormal(const PhiloxCounter& bits, int lane) {
  const int pair = lane / 2;
  const double u1 = (static_cast<double>(bits[2 * pair] >> 8) + 1.0) * 0x1.0p-24;
  const double u2 = static_cast<double>(bits[2 * pair + 1] >> 8) * 0x1.0p-24;
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double angle = 6.283185307179586476925 * u2;
  return lane % 2 == 0 ? r * std::cos(angle) : r * std::sin(angle);
}

// The float spacing at |x|: a correctly rounded result is within half of it.
double FloatSpacing(double x) {
  const float f = std::fabs(static_cast<float>(x));
  return static_cast<double>(std::nextafter(f, INFINITY)) - f;
}

// PhiloxLog over every u1 the normals use (k / 2^24, k = 1 .. 2^24), against libm's double log.
TEST(PhiloxTest, LogPolynomialIsExhaustivelyAccurate) {
  double worst = 0.0;
  for (uint32_t k = 1; k <= (1u << 24); ++k) {
    const float u1 = static_cast<float>(k) * 0x1.0p-24f;
    const double ref = std::log(static_cast<double>(u1));
    const double err = std::fabs(PhiloxLog(u1) - ref);
    worst = std::max(worst, err / std::max(std::fabs(ref), 0x1.0p-24));
  }
  EXPECT_LT(worst, 1e-14) << "relative error of PhiloxLog";
}

// PhiloxCosSin2Pi over every angle 2 pi j / 2^24, against libm's double cos and sin.
TEST(PhiloxTest, CosSinPolynomialIsExhaustivelyAccurate) {
  double worst = 0.0;
  for (uint32_t j = 0; j < (1u << 24); ++j) {
    const double angle = 6.283185307179586476925 * (static_cast<double>(j) * 0x1.0p-24);
    double c, s;
    PhiloxCosSin2Pi(j, &c, &s);
    worst = std::max({worst, std::fabs(c - std::cos(angle)), std::fabs(s - std::sin(angle))});
  }
  EXPECT_LT(worst, 1e-14) << "absolute error of PhiloxCosSin2Pi";
}

// The normals are the double-precision Box-Muller values rounded to float: within half a float
// spacing (plus the reference's own ~1e-15), which is under 2e-7 absolute for |z| < 4 (at larger
// |z| half a spacing is 2.4e-7: no float can do better). 2^20 draws and the edge cases: u1 at both
// ends of (0, 1] and the angle at and next to every multiple of pi/4, where the quarter-turn
// reduction switches.
TEST(PhiloxTest, NormalsAreCorrectlyRoundedBoxMuller) {
  auto check = [](const PhiloxCounter& bits, double* worst_abs, double* worst_spacings) {
    const std::array<float, 4> z = NormalsFromBlock(bits);
    for (int lane = 0; lane < 4; ++lane) {
      const double ref = ReferenceNormal(bits, lane);
      const double err = std::fabs(static_cast<double>(z[lane]) - ref);
      const double tol = 0.5 * FloatSpacing(ref) + 1e-13;
      ASSERT_LE(err, tol) << "bits " << bits[0] << " " << bits[1] << " " << bits[2] << " "
                          << bits[3] << " lane " << lane << " z " << z[lane] << " ref " << ref;
      if (std::fabs(ref) < 4.0) *worst_abs = std::max(*worst_abs, err);
      // Near 0 the reference's own error (1e-15, e.g. cos(pi/2) = 6e-17) exceeds a spacing.
      if (std::fabs(ref) > 1e-6)
        *worst_spacings = std::max(*worst_spacings, err / FloatSpacing(ref));
    }
  };
  double worst_abs = 0.0, worst_spacings = 0.0;
  for (uint64_t b = 0; b < (1u << 18); ++b) {
    check(PhiloxBlock(123, 4, b), &worst_abs, &worst_spacings);
  }
  const uint32_t u1_words[] = {0u, 0xffu, 0x100u, 0x7fffffffu, 0xffffff00u, 0xffffffffu};
  for (uint32_t w1 : u1_words) {
    for (uint32_t octant = 0; octant <= 8; ++octant) {
      for (int d = -1; d <= 1; ++d) {
        const int64_t j = static_cast<int64_t>(octant) * (1 << 21) + d;
        if (j < 0 || j >= (1 << 24)) continue;
        const uint32_t w2 = static_cast<uint32_t>(j) << 8;
        check({w1, w2, w1 ^ 0x55555555u, w2 | 0xffu}, &worst_abs, &worst_spacings);
      }
    }
  }
  EXPECT_LT(worst_abs, 2e-7);
  EXPECT_LT(worst_spacings, 0.5 + 1e-6);
  std::printf("worst error: %.3g absolute (|z| < 4), %.6f float spacings\n", worst_abs,
              worst_spacings);
}

// The exact bits of a few normals. CPU and CUDA initialisations agree only while these hold on
// both (core/kernels/cuda/philox.cu computes them with the same code); a change here changes every
// model's initial weights.
TEST(PhiloxTest, NormalBitsAreFrozen) {
  const uint32_t expected[8] = {0x3f8856dbu, 0xbf514951u, 0xbf28902eu, 0x3f9101c0u,
                                0xbea8419bu, 0x3ea7c2c6u, 0x3efc8bdeu, 0x3f743a50u};
  for (int i = 0; i < 8; ++i) {
    const float z = PhiloxNormal(42, 7, i);
    uint32_t u;
    std::memcpy(&u, &z, 4);
    EXPECT_EQ(u, expected[i]) << "index " << i << " value " << z;
  }
  std::vector<float> x(8);
  FillNormal(absl::MakeSpan(x), 42, 7, 0, 0.5f, 0.02f);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(x[i], std::fmaf(0.02f, PhiloxNormal(42, 7, i), 0.5f));
  }
}

TEST(PhiloxTest, NormalMomentsAndUniformRange) {
  const int n = 1 << 20;
  std::vector<float> z(n), u(n);
  FillNormal(absl::MakeSpan(z), 42, 7, 0);
  FillUniform(absl::MakeSpan(u), 42, 7, 0);
  double s = 0, s2 = 0, s4 = 0;
  for (float x : z) {
    s += x;
    s2 += double(x) * x;
    s4 += double(x) * x * x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.005);
  EXPECT_NEAR(s2 / n, 1.0, 0.005);
  EXPECT_NEAR(s4 / n, 3.0, 0.05);  // kurtosis of a normal
  double us = 0;
  for (float x : u) {
    ASSERT_GE(x, 0.0f);
    ASSERT_LT(x, 1.0f);
    us += x;
  }
  EXPECT_NEAR(us / n, 0.5, 0.002);
}

TEST(PhiloxTest, PureFunctionOfSeedStreamIndex) {
  // Any slice of a stream equals the element-wise function, whatever the offset or thread count.
  std::vector<float> whole(1001), part(301);
  const int saved = GetThreads();
  SetThreads(1);
  FillNormal(absl::MakeSpan(whole), 5, 9, 0);
  SetThreads(std::max(2, saved));
  FillNormal(absl::MakeSpan(part), 5, 9, 503);  // offset not a multiple of 4
  SetThreads(saved);
  for (int i = 0; i < 1001; ++i) ASSERT_EQ(whole[i], PhiloxNormal(5, 9, i));
  for (int i = 0; i < 301; ++i) ASSERT_EQ(part[i], whole[503 + i]);
  // Different streams and seeds differ.
  EXPECT_NE(PhiloxNormal(5, 9, 0), PhiloxNormal(5, 10, 0));
  EXPECT_NE(PhiloxNormal(5, 9, 0), PhiloxNormal(6, 9, 0));
}

TEST(PhiloxTest, VectorisedFillAndAddMatchTheElementwiseFunction) {
  // Long enough for the threaded, vectorised body; every offset and length mod 4 for the edges.
  const int saved = GetThreads();
  SetThreads(std::max(2, saved));
  for (int64_t n : {0L, 1L, 3L, 7L, 40001L}) {
    for (uint64_t offset : {0u, 1u, 2u, 3u, 1u << 20}) {
      std::vector<float> z(n), x(n), y(n);
      for (int64_t i = 0; i < n; ++i) x[i] = 0.001f * static_cast<float>(i % 997) - 0.4f;
      FillNormal(absl::MakeSpan(z), 11, 4, offset, 0.5f, 0.02f);
      AddNormal(y.data(), x.data(), n, 11, 4, offset, -1e-3f);
      std::vector<float> inplace = x;
      AddNormal(inplace.data(), inplace.data(), n, 11, 4, offset, -1e-3f);
      for (int64_t i = 0; i < n; ++i) {
        const float want = PhiloxNormal(11, 4, offset + i);
        ASSERT_EQ(z[i], std::fmaf(0.02f, want, 0.5f)) << "n " << n << " offset " << offset;
        ASSERT_EQ(y[i], std::fmaf(-1e-3f, want, x[i])) << "n " << n << " offset " << offset;
        ASSERT_EQ(inplace[i], y[i]);
      }
    }
  }
  SetThreads(saved);
}

}  // namespace
}  // namespace memtrain::core
