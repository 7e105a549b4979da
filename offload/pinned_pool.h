// A pool of page-locked host buffers for the layer streamer, sized from the model's real block
// sizes (MemAscend) instead of ZeRO-Infinity's fixed max-size slots.
//
//   MT_ASSIGN_OR_RETURN(std::vector<SizeClass> classes,
//                       SizeClassesForModel(model, /*prefetch_depth=*/2, /*writes_in_flight=*/1));
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<PinnedPool> pool, PinnedPool::Create(classes, {}));
//   MT_ASSIGN_OR_RETURN(PinnedSlot slot, pool->Acquire(model.block(1).numel() * 4));
//   // ... slot.data() is 4096-aligned, slot.capacity() bytes; released when `slot` goes away.
//
// Every slot is carved at its exact size rounded up to 4096 bytes (the O_DIRECT alignment), never
// to a power of two, from ONE anonymous mapping that is mlock'ed when RLIMIT_MEMLOCK allows it.
// Acquire never allocates: when the class a request belongs to has no free slot it returns
// ResourceExhausted. Thread-safe.
#ifndef MEMTRAIN_OFFLOAD_PINNED_POOL_H_
#define MEMTRAIN_OFFLOAD_PINNED_POOL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace memtrain::offload {

inline constexpr int64_t kIoAlignment = 4096;
inline int64_t RoundUpToIoAlignment(int64_t bytes) {
  return (bytes + kIoAlignment - 1) / kIoAlignment * kIoAlignment;
}

struct SizeClass {
  int64_t bytes = 0;  // the largest request the class serves (exact; rounded to 4096 when carved)
  int slots = 0;
};

// The size classes for streaming `model`'s blocks (f32, `elem_bytes` per element): one class per
// distinct block size (so the embedding and the head, which differ from the layers, get their own
// classes, and all the equal transformer layers share one), each with prefetch_depth +
// writes_in_flight slots, ordered by size. Empty blocks get no class. `stage_class`, when given,
// receives the class index of every stage (-1 for empty blocks).
absl::StatusOr<std::vector<SizeClass>> SizeClassesForModel(core::Model& model, int prefetch_depth,
                                                           int writes_in_flight,
                                                           std::vector<int>* stage_class = nullptr,
                                                           int64_t elem_bytes = 4);

// What a ZeRO-Infinity-style pool reserves for the same model: `buffer_count` slots, each sized
// for the largest tensor (ParamView) of any block, rounded to 4096 like ours.
int64_t ZeroStylePoolBytes(core::Model& model, int buffer_count, int64_t elem_bytes = 4);
// The buffer_count such a pool needs to hold what SizeClassesForModel's pool holds: ZeRO swaps
// per tensor, one slot each, so (prefetch_depth + writes_in_flight) blocks of every distinct
// block size take as many slots as those blocks have tensors.
int ZeroStyleBufferCount(core::Model& model, int prefetch_depth, int writes_in_flight);
// The same with fixed max-size slots in place of `classes`: as many slots as `classes` hold in
// all, each the size of the largest class.
int64_t MaxSlotPoolBytes(const std::vector<SizeClass>& classes);

struct PinnedPoolOptions {
  // Lock the region in RAM (mlock). When it would exceed RLIMIT_MEMLOCK (or mlock fails):
  // require_locked fails Create with the limit, the bytes needed and how to raise it; otherwise
  // the pool continues unlocked and says why in lock_status().
  bool lock = true;
  bool require_locked = false;
};

class PinnedPool;

// One slot handed out by a pool; gives it back when destroyed (or on Release). Movable only.
class PinnedSlot {
 public:
  PinnedSlot() = default;
  PinnedSlot(PinnedSlot&& other) noexcept { *this = std::move(other); }
  PinnedSlot& operator=(PinnedSlot&& other) noexcept;
  PinnedSlot(const PinnedSlot&) = delete;
  PinnedSlot& operator=(const PinnedSlot&) = delete;
  ~PinnedSlot() { Release(); }

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }        // as requested
  int64_t capacity() const { return capacity_; }  // the slot's carved size (multiple of 4096)
  int size_class() const { return class_; }
  bool valid() const { return pool_ != nullptr; }
  void Release();

 private:
  friend class PinnedPool;
  PinnedPool* pool_ = nullptr;
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  int64_t capacity_ = 0;
  int class_ = -1;
  int index_ = -1;
};

class PinnedPool {
 public:
  // InvalidArgument for a class with bytes <= 0 or slots <= 0, or no classes; ResourceExhausted
  // when the region cannot be mapped, or (require_locked) not locked.
  static absl::StatusOr<std::unique_ptr<PinnedPool>> Create(std::vector<SizeClass> classes,
                                                            PinnedPoolOptions options = {});
  ~PinnedPool();  // every slot must have been released
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;

  // A free slot of the smallest class whose size is >= bytes. ResourceExhausted when every slot
  // of that class is in use (never falls through to a larger class, never allocates);
  // InvalidArgument when no class is large enough.
  absl::StatusOr<PinnedSlot> Acquire(int64_t bytes);

  const std::vector<SizeClass>& classes() const { return classes_; }
  int64_t slot_capacity(int size_class) const { return capacity_[size_class]; }
  int64_t bytes_reserved() const { return reserved_; }
  int64_t bytes_in_use() const;  // sum of the capacities of the slots handed out
  int64_t peak_bytes_in_use() const;
  int free_slots(int size_class) const;
  bool locked() const { return locked_; }
  const std::string& lock_status() const { return lock_status_; }

 private:
  PinnedPool() = default;
  void Return(int size_class, int index);
  friend class PinnedSlot;

  std::vector<SizeClass> classes_;
  std::vector<int64_t> capacity_;       // per class, rounded to 4096
  std::vector<int64_t> class_offset_;   // per class, into the region
  std::vector<std::vector<int>> free_;  // per class, free slot indices (a stack)
  void* region_ = nullptr;
  int64_t reserved_ = 0;
  bool locked_ = false;
  std::string lock_status_;
  mutable std::mutex mu_;
  int64_t in_use_ = 0;
  int64_t peak_ = 0;
};

}  // namespace memtrain::offload

#endif  // MEMTRAIN_OFFLOAD_PINNED_POOL_H_
