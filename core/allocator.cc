#include "core/allocator.h"

#include <cstdlib>
#include <mutex>

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace memtrain::core {
namespace {

constexpr size_t kAlignment = 64;
constexpr int kMaxDevices = 16;

class CpuAllocator : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    return std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  }
  void Free(void* ptr, size_t) override { std::free(ptr); }
};

struct Registry {
  std::mutex mu;
  std::array<Allocator*, 2> allocators{};
  // [device type][device index]
  std::array<std::array<MemoryStats, kMaxDevices>, 2> stats{};
};

Registry& GetRegistry() {
  static Registry* r = [] {
    auto* reg = new Registry;
    static CpuAllocator cpu;
    reg->allocators[static_cast<int>(DeviceType::kCpu)] = &cpu;
    return reg;
  }();
  return *r;
}

MemoryStats& StatsFor(Registry& r, Device d) {
  MT_CHECK(d.index >= 0 && d.index < kMaxDevices) << "device index " << d.index;
  return r.stats[static_cast<int>(d.type)][d.index];
}

}  // namespace

std::string Device::ToString() const {
  return type == DeviceType::kCpu ? "cpu" : absl::StrFormat("cuda:%d", index);
}

const char* MemoryTagName(MemoryTag t) {
  switch (t) {
    case MemoryTag::kParams:
      return "params";
    case MemoryTag::kGrads:
      return "grads";
    case MemoryTag::kOptimizer:
      return "optimizer";
    case MemoryTag::kActivations:
      return "activations";
    case MemoryTag::kScratch:
      return "scratch";
    case MemoryTag::kOther:
    case MemoryTag::kCount:
      break;
  }
  return "other";
}

void RegisterAllocator(DeviceType type, Allocator* allocator) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocators[static_cast<int>(type)] = allocator;
}

absl::StatusOr<void*> Allocate(Device device, size_t bytes, MemoryTag tag) {
  Registry& r = GetRegistry();
  Allocator* a;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    a = r.allocators[static_cast<int>(device.type)];
    if (a == nullptr) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "no allocator for device %s: this build has no backend for it", device.ToString()));
    }
    MemoryStats& s = StatsFor(r, device);
    if (s.budget > 0 && s.current + static_cast<int64_t>(bytes) > s.budget) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "allocating %d bytes of %s on %s would exceed its budget of %d bytes (%d in use); "
          "raise the budget or offload more blocks",
          bytes, MemoryTagName(tag), device.ToString(), s.budget, s.current));
    }
    // Reserve before allocating so concurrent callers see the budget.
    s.current += bytes;
    s.current_by_tag[static_cast<int>(tag)] += bytes;
  }
  void* p = a->Allocate(bytes);
  std::lock_guard<std::mutex> lock(r.mu);
  MemoryStats& s = StatsFor(r, device);
  if (p == nullptr) {
    s.current -= bytes;
    s.current_by_tag[static_cast<int>(tag)] -= bytes;
    return absl::ResourceExhaustedError(
        absl::StrFormat("out of memory on %s allocating %d bytes of %s", device.ToString(), bytes,
                        MemoryTagName(tag)));
  }
  int t = static_cast<int>(tag);
  if (s.current > s.peak) s.peak = s.current;
  if (s.current_by_tag[t] > s.peak_by_tag[t]) s.peak_by_tag[t] = s.current_by_tag[t];
  return p;
}

void Free(Device device, void* ptr, size_t bytes, MemoryTag tag) {
  if (ptr == nullptr) return;
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocators[static_cast<int>(device.type)]->Free(ptr, bytes);
  MemoryStats& s = StatsFor(r, device);
  s.current -= bytes;
  s.current_by_tag[static_cast<int>(tag)] -= bytes;
}

MemoryStats GetMemoryStats(Device device) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  return StatsFor(r, device);
}

void ResetPeakMemory(Device device) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  MemoryStats& s = StatsFor(r, device);
  s.peak = s.current;
  s.peak_by_tag = s.current_by_tag;
}

void SetMemoryBudget(Device device, int64_t bytes) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  StatsFor(r, device).budget = bytes;
}

}  // namespace memtrain::core
