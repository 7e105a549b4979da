#include "optim/schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace memtrain::optim {
namespace {

TEST(ScheduleTest, WarmupThenCosineAndLinearToTheFloor) {
  LrSchedule s{.peak = 1.0f,
               .warmup_steps = 4,
               .total_steps = 14,
               .decay = Decay::kCosine,
               .min_ratio = 0.1f};
  EXPECT_FLOAT_EQ(s.At(0), 0.25f);
  EXPECT_FLOAT_EQ(s.At(3), 1.0f);
  EXPECT_FLOAT_EQ(s.At(4), 1.0f);  // decay starts at the peak
  // Decay over steps 4..13 (9 intervals); step 8 is 4/9 of the way.
  EXPECT_NEAR(s.At(8), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 4 / 9.0)), 1e-6);
  EXPECT_NEAR(s.At(13), 0.1f, 1e-6);  // the last step reaches the floor
  EXPECT_NEAR(s.At(100), 0.1f, 1e-6);
  s.decay = Decay::kLinear;
  EXPECT_NEAR(s.At(7), 0.1 + 0.9 * (1 - 3 / 9.0), 1e-6);
  s.decay = Decay::kConstant;
  EXPECT_FLOAT_EQ(s.At(10), 1.0f);
}

}  // namespace
}  // namespace memtrain::optim
