#include "core/allocator.h"

#include <gtest/gtest.h>

#include "core/dtype.h"
#include "core/tensor.h"

namespace memtrain::core {
namespace {

TEST(AllocatorTest, CountsCurrentAndPeakPerTag) {
  const Device cpu = Device::Cpu();
  const MemoryStats before = GetMemoryStats(cpu);
  ResetPeakMemory(cpu);
  {
    auto a = Tensor::Zeros({1000}, DType::kF32, MemoryTag::kOptimizer);
    ASSERT_TRUE(a.ok());
    {
      auto b = Tensor::Empty({10, 50}, DType::kBF16, MemoryTag::kOptimizer);
      ASSERT_TRUE(b.ok());
      MemoryStats s = GetMemoryStats(cpu);
      EXPECT_EQ(s.current - before.current, 4000 + 1000);
      EXPECT_EQ(s.current_by_tag[int(MemoryTag::kOptimizer)] -
                    before.current_by_tag[int(MemoryTag::kOptimizer)],
                5000);
      // A view shares storage: no new bytes.
      Tensor v = a->View(10, {5, 2});
      EXPECT_EQ(GetMemoryStats(cpu).current - before.current, 5000);
      EXPECT_EQ(v.f32(), a->f32() + 10);
    }
    MemoryStats s = GetMemoryStats(cpu);
    EXPECT_EQ(s.current - before.current, 4000);
    EXPECT_GE(s.peak - before.current, 5000);
  }
  EXPECT_EQ(GetMemoryStats(cpu).current, before.current);
}

TEST(AllocatorTest, BudgetGivesResourceExhausted) {
  const Device cpu = Device::Cpu();
  SetMemoryBudget(cpu, GetMemoryStats(cpu).current + 1024);
  auto ok = Tensor::Empty({256}, DType::kF32, MemoryTag::kActivations);
  EXPECT_TRUE(ok.ok());
  auto too_big = Tensor::Empty({1}, DType::kF32, MemoryTag::kActivations);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("budget"), std::string::npos);
  SetMemoryBudget(cpu, 0);
  EXPECT_TRUE(Tensor::Empty({1}, DType::kF32, MemoryTag::kActivations).ok());
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 0x1.0p-8f)), 1.0f);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3 * 0x1.0p-8f)), 1.0f + 0x1.0p-6f);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 0x1.8p-8f)), 1.0f + 0x1.0p-7f);  // above half: up
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(INFINITY))));
}

}  // namespace
}  // namespace memtrain::core
