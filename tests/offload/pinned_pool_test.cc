#include "offload/pinned_pool.h"

#include <sys/resource.h>

#include <cstring>

#include "core/model/gpt2.h"
#include "gtest/gtest.h"

namespace memtrain::offload {
namespace {

using core::GPT2;
using core::GPT2Config;

std::unique_ptr<GPT2> SmallGpt2() {
  auto model = GPT2::Create(
      GPT2Config{.max_seq_len = 64, .vocab_size = 256, .n_layer = 2, .n_head = 2, .n_embd = 32});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

TEST(PinnedPool, SizeClassesFromGpt2BlockSizes) {
  std::unique_ptr<GPT2> model = SmallGpt2();
  const int64_t C = 32, Vp = 256, maxT = 64;
  const int64_t emb = (Vp + maxT) * C * 4;
  const int64_t layer = (12 * C * C + 13 * C) * 4;  // llm.c: 12C^2 weights + 13C biases/norms
  const int64_t head = 2 * C * 4;
  ASSERT_EQ(model->block(0).numel() * 4, emb);
  ASSERT_EQ(model->block(1).numel() * 4, layer);
  ASSERT_EQ(model->block(3).numel() * 4, head);

  std::vector<int> stage_class;
  auto classes =
      SizeClassesForModel(*model, /*prefetch_depth=*/2, /*writes_in_flight=*/1, &stage_class);
  ASSERT_TRUE(classes.ok()) << classes.status();
  ASSERT_EQ(classes->size(), 3u);  // head, embedding, layers (both share one), by size
  EXPECT_EQ((*classes)[0].bytes, head);
  EXPECT_EQ((*classes)[1].bytes, emb);
  EXPECT_EQ((*classes)[2].bytes, layer);
  for (const SizeClass& c : *classes) EXPECT_EQ(c.slots, 3);
  EXPECT_EQ(stage_class, (std::vector<int>{1, 2, 2, 0}));

  EXPECT_FALSE(SizeClassesForModel(*model, 0, 0).ok());
}

TEST(PinnedPool, ExactSizesRoundedOnlyTo4096FromOneRegion) {
  std::unique_ptr<GPT2> model = SmallGpt2();
  auto classes = SizeClassesForModel(*model, 2, 1);
  ASSERT_TRUE(classes.ok());
  auto pool = PinnedPool::Create(*classes, {});
  ASSERT_TRUE(pool.ok()) << pool.status();
  int64_t expected = 0;
  for (const SizeClass& c : *classes) expected += RoundUpToIoAlignment(c.bytes) * c.slots;
  EXPECT_EQ((*pool)->bytes_reserved(), expected);
  // 4096-rounding, not power-of-two: the layer class (50,816 bytes) carves 53,248, not 65,536.
  EXPECT_EQ((*pool)->slot_capacity(0), 4096);   // the head: 256 bytes
  EXPECT_EQ((*pool)->slot_capacity(1), 40960);  // 40,960 is already a multiple of 4096
  EXPECT_EQ((*pool)->slot_capacity(2), 53248);

  // All slots of all classes at once: distinct, aligned, non-overlapping, inside one region.
  std::vector<PinnedSlot> slots;
  for (int c = 0; c < 3; ++c) {
    for (int s = 0; s < 3; ++s) {
      auto slot = (*pool)->Acquire((*classes)[c].bytes);
      ASSERT_TRUE(slot.ok()) << slot.status();
      EXPECT_EQ(slot->size_class(), c);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(slot->data()) % 4096, 0u);
      std::memset(slot->data(), c * 3 + s, slot->capacity());
      slots.push_back(std::move(slot).value());
    }
  }
  char* lo = static_cast<char*>(slots[0].data());
  char* hi = lo;
  for (const PinnedSlot& s : slots) {
    lo = std::min(lo, static_cast<char*>(s.data()));
    hi = std::max(hi, static_cast<char*>(s.data()) + s.capacity());
  }
  EXPECT_EQ(hi - lo, (*pool)->bytes_reserved());
  for (size_t i = 0; i < slots.size(); ++i) {  // nobody overwrote anybody
    const auto* p = static_cast<const unsigned char*>(slots[i].data());
    for (int64_t b = 0; b < slots[i].capacity(); b += 997) ASSERT_EQ(p[b], i) << i;
  }
  EXPECT_EQ((*pool)->bytes_in_use(), (*pool)->bytes_reserved());
  slots.clear();
  EXPECT_EQ((*pool)->bytes_in_use(), 0);
  EXPECT_EQ((*pool)->peak_bytes_in_use(), (*pool)->bytes_reserved());
}

TEST(PinnedPool, NeverHandsOutMoreSlotsThanItHas) {
  auto pool = PinnedPool::Create({{.bytes = 100, .slots = 2}, {.bytes = 10000, .slots = 1}});
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto a = (*pool)->Acquire(50);
  auto b = (*pool)->Acquire(100);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->capacity(), 4096);
  auto c = (*pool)->Acquire(1);  // the small class is exhausted: refused, not handed a big slot
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("all 2 slots of size class 0"), std::string::npos)
      << c.status();
  EXPECT_EQ((*pool)->free_slots(1), 1);
  auto big = (*pool)->Acquire(10000);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->capacity(), 12288);
  EXPECT_EQ((*pool)->Acquire(5000).status().code(), absl::StatusCode::kResourceExhausted);
  auto huge = (*pool)->Acquire(10001);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("largest size class (10000 bytes)"), std::string::npos);

  EXPECT_EQ((*pool)->bytes_in_use(), 4096 * 2 + 12288);
  a->Release();
  EXPECT_FALSE(a->valid());
  EXPECT_EQ((*pool)->bytes_in_use(), 4096 + 12288);
  PinnedSlot moved = std::move(b).value();  // moving keeps one owner
  auto again = (*pool)->Acquire(1);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*pool)->Acquire(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*pool)->peak_bytes_in_use(), 2 * 4096 + 12288);
}

TEST(PinnedPool, MemlockLimitIsCheckedAndNamed) {
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = 64 * 1024;
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &small), 0);
  const std::vector<SizeClass> classes = {{.bytes = 1 << 20, .slots = 2}};

  auto strict = PinnedPool::Create(classes, {.require_locked = true});
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(strict.status().message());
  EXPECT_NE(msg.find("needs 2097152 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("RLIMIT_MEMLOCK is 65536 bytes"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ulimit -l"), std::string::npos) << msg;
  EXPECT_NE(msg.find("limits.conf"), std::string::npos) << msg;

  auto lax = PinnedPool::Create(classes, {});
  ASSERT_TRUE(lax.ok()) << lax.status();
  EXPECT_FALSE((*lax)->locked());
  EXPECT_NE((*lax)->lock_status().find("not locked"), std::string::npos);
  EXPECT_EQ((*lax)->bytes_reserved(), 2 << 20);
  lax->reset();

  auto fits = PinnedPool::Create({{.bytes = 4096, .slots = 4}}, {.require_locked = true});
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_TRUE((*fits)->locked()) << (*fits)->lock_status();
  ASSERT_EQ(setrlimit(RLIMIT_MEMLOCK, &old), 0);
}

TEST(PinnedPool, LessThanZeroStyleMaxSizeSlots) {
  std::unique_ptr<GPT2> model = SmallGpt2();
  auto classes = SizeClassesForModel(*model, 2, 1);
  ASSERT_TRUE(classes.ok());
  auto pool = PinnedPool::Create(*classes, {});
  ASSERT_TRUE(pool.ok());
  // ZeRO-Infinity: one slot per tensor in flight (3 x (2 + 2 + 12) tensors), each sized for the
  // largest tensor (wte here).
  const int buffers = ZeroStyleBufferCount(*model, 2, 1);
  EXPECT_EQ(buffers, 3 * (2 + 2 + 12));
  const int64_t zero = ZeroStylePoolBytes(*model, buffers);
  EXPECT_EQ(zero, buffers * RoundUpToIoAlignment(256 * 32 * 4));
  // Max-size slots at block granularity: as many slots, all of the largest block's size.
  EXPECT_EQ(MaxSlotPoolBytes(*classes), 9 * int64_t{53248});
  EXPECT_LT((*pool)->bytes_reserved(), zero);
  EXPECT_LT((*pool)->bytes_reserved(), MaxSlotPoolBytes(*classes));
}

TEST(PinnedPool, RejectsBadClasses) {
  EXPECT_FALSE(PinnedPool::Create({}).ok());
  EXPECT_FALSE(PinnedPool::Create({{.bytes = 0, .slots = 1}}).ok());
  EXPECT_FALSE(PinnedPool::Create({{.bytes = 10, .slots = 0}}).ok());
}

}  // namespace
}  // namespace memtrain::offload
