#include "core/philox.h"

#include <gtest/gtest.h>

#include <cmath>
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

}  // namespace
}  // namespace memtrain::core
