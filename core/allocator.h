// Devices, allocators and memory accounting. Every byte a tensor owns comes from the allocator of
// its device and is counted under a tag (params, grads, optimizer state, activations, ...), so a
// run can report current and peak bytes per device and per tag. A per-device budget turns the CPU
// into a stand-in for a small accelerator: allocations past the budget fail with
// ResourceExhausted, exactly as a GPU allocation would.
//
//   core::SetMemoryBudget(core::Device::Cpu(), 512 << 20);
//   absl::StatusOr<void*> p = core::Allocate(core::Device::Cpu(), bytes, core::MemoryTag::kParams);
//   core::MemoryStats s = core::GetMemoryStats(core::Device::Cpu());
#ifndef MEMTRAIN_CORE_ALLOCATOR_H_
#define MEMTRAIN_CORE_ALLOCATOR_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace memtrain::core {

enum class DeviceType : uint8_t { kCpu, kCuda };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;

  static Device Cpu() { return {DeviceType::kCpu, 0}; }
  static Device Cuda(int i) { return {DeviceType::kCuda, i}; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  std::string ToString() const;
};

enum class MemoryTag : uint8_t {
  kParams,
  kGrads,
  kOptimizer,
  kActivations,
  kScratch,
  kOther,
  kCount
};
const char* MemoryTagName(MemoryTag t);
constexpr int kNumMemoryTags = static_cast<int>(MemoryTag::kCount);

struct MemoryStats {
  int64_t current = 0;
  int64_t peak = 0;
  std::array<int64_t, kNumMemoryTags> current_by_tag{};
  std::array<int64_t, kNumMemoryTags> peak_by_tag{};
  int64_t budget = 0;  // 0 = unlimited
};

// One backend's raw memory. The CPU one is built in; the CUDA backend registers its own.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* Allocate(size_t bytes) = 0;  // nullptr on failure
  virtual void Free(void* ptr, size_t bytes) = 0;
};

void RegisterAllocator(DeviceType type, Allocator* allocator);

// Allocates `bytes` (64-byte aligned) on `device`, counted under `tag`. Fails with
// ResourceExhausted when the device's budget or the backend cannot serve it.
absl::StatusOr<void*> Allocate(Device device, size_t bytes, MemoryTag tag);
void Free(Device device, void* ptr, size_t bytes, MemoryTag tag);

MemoryStats GetMemoryStats(Device device);
void ResetPeakMemory(Device device);
// 0 removes the budget.
void SetMemoryBudget(Device device, int64_t bytes);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_ALLOCATOR_H_
