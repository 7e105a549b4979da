#include "offload/pinned_pool.h"

#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace memtrain::offload {

absl::StatusOr<std::vector<SizeClass>> SizeClassesForModel(core::Model& model, int prefetch_depth,
                                                           int writes_in_flight,
                                                           std::vector<int>* stage_class,
                                                           int64_t elem_bytes) {
  if (prefetch_depth < 0 || writes_in_flight < 0 || prefetch_depth + writes_in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat("offload pool: prefetch_depth (", prefetch_depth,
                                                   ") + writes_in_flight (", writes_in_flight,
                                                   ") must be at least 1 and neither negative"));
  }
  std::map<int64_t, int> by_size;  // exact bytes -> class index (filled after sorting)
  for (int s = 0; s < model.num_stages(); ++s) {
    int64_t bytes = model.block(s).numel() * elem_bytes;
    if (bytes > 0) by_size[bytes] = 0;
  }
  std::vector<SizeClass> classes;
  for (auto& [bytes, index] : by_size) {
    index = static_cast<int>(classes.size());
    classes.push_back({.bytes = bytes, .slots = prefetch_depth + writes_in_flight});
  }
  if (stage_class != nullptr) {
    stage_class->assign(model.num_stages(), -1);
    for (int s = 0; s < model.num_stages(); ++s) {
      int64_t bytes = model.block(s).numel() * elem_bytes;
      if (bytes > 0) (*stage_class)[s] = by_size[bytes];
    }
  }
  return classes;
}

int64_t ZeroStylePoolBytes(core::Model& model, int buffer_count, int64_t elem_bytes) {
  int64_t largest = 0;
  for (int s = 0; s < model.num_stages(); ++s) {
    for (const core::ParamView& v : model.block(s).views()) largest = std::max(largest, v.numel);
  }
  return buffer_count * RoundUpToIoAlignment(largest * elem_bytes);
}

int ZeroStyleBufferCount(core::Model& model, int prefetch_depth, int writes_in_flight) {
  std::map<int64_t, int> tensors;  // distinct block size -> tensors in such a block
  for (int s = 0; s < model.num_stages(); ++s) {
    if (model.block(s).numel() > 0) {
      tensors[model.block(s).numel()] = static_cast<int>(model.block(s).views().size());
    }
  }
  int count = 0;
  for (const auto& [numel, n] : tensors) count += (prefetch_depth + writes_in_flight) * n;
  return count;
}

int64_t MaxSlotPoolBytes(const std::vector<SizeClass>& classes) {
  int64_t largest = 0, slots = 0;
  for (const SizeClass& c : classes) {
    largest = std::max(largest, RoundUpToIoAlignment(c.bytes));
    slots += c.slots;
  }
  return slots * largest;
}

PinnedSlot& PinnedSlot::operator=(PinnedSlot&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    capacity_ = other.capacity_;
    class_ = other.class_;
    index_ = other.index_;
    other.pool_ = nullptr;
    other.data_ = nullptr;
  }
  return *this;
}

void PinnedSlot::Release() {
  if (pool_ == nullptr) return;
  pool_->Return(class_, index_);
  pool_ = nullptr;
  data_ = nullptr;
}

absl::StatusOr<std::unique_ptr<PinnedPool>> PinnedPool::Create(std::vector<SizeClass> classes,
                                                               PinnedPoolOptions options) {
  if (classes.empty()) return absl::InvalidArgumentError("offload pool: no size classes");
  std::unique_ptr<PinnedPool> pool(new PinnedPool());
  // Smallest first, so Acquire's first fit is the smallest class that fits.
  std::stable_sort(classes.begin(), classes.end(),
                   [](const SizeClass& a, const SizeClass& b) { return a.bytes < b.bytes; });
  int64_t total = 0;
  for (size_t i = 0; i < classes.size(); ++i) {
    const SizeClass& c = classes[i];
    if (c.bytes <= 0 || c.slots <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("offload pool: size class ", i, " has bytes ",
                                                     c.bytes, " and slots ", c.slots,
                                                     "; both must be positive"));
    }
    int64_t cap = RoundUpToIoAlignment(c.bytes);
    pool->capacity_.push_back(cap);
    pool->class_offset_.push_back(total);
    total += cap * c.slots;
    std::vector<int> free;
    for (int s = c.slots - 1; s >= 0; --s) free.push_back(s);
    pool->free_.push_back(std::move(free));
  }
  pool->classes_ = std::move(classes);
  pool->reserved_ = total;

  void* region = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("offload pool: cannot map ", total, " bytes: ", std::strerror(errno)));
  }
  pool->region_ = region;

  if (!options.lock) {
    pool->lock_status_ = "not locked: PinnedPoolOptions::lock is false";
  } else {
    struct rlimit lim {};
    getrlimit(RLIMIT_MEMLOCK, &lim);
    std::string why;
    if (lim.rlim_cur != RLIM_INFINITY && static_cast<uint64_t>(total) > lim.rlim_cur) {
      why = absl::StrFormat(
          "the pool needs %d bytes locked but RLIMIT_MEMLOCK is %d bytes; raise it with "
          "`ulimit -l unlimited` (or `ulimit -l %d`, in KiB) or a memlock line in "
          "/etc/security/limits.conf",
          total, static_cast<int64_t>(lim.rlim_cur), (total + 1023) / 1024);
    } else if (mlock(region, total) != 0) {
      why = absl::StrFormat(
          "mlock of %d bytes failed: %s (RLIMIT_MEMLOCK %s); raise it with `ulimit -l` or "
          "/etc/security/limits.conf",
          total, std::strerror(errno),
          lim.rlim_cur == RLIM_INFINITY ? std::string("unlimited")
                                        : absl::StrCat(lim.rlim_cur, " bytes"));
    } else {
      pool->locked_ = true;
      pool->lock_status_ = absl::StrCat("locked: ", total, " bytes");
    }
    if (!pool->locked_) {
      if (options.require_locked) {
        return absl::ResourceExhaustedError(absl::StrCat("offload pool (require_locked): ", why));
      }
      pool->lock_status_ = absl::StrCat("not locked: ", why);
    }
  }
  return pool;
}

PinnedPool::~PinnedPool() {
  MT_CHECK(in_use_ == 0) << "PinnedPool destroyed with " << in_use_ << " bytes of slots in use";
  if (region_ != nullptr) {
    if (locked_) munlock(region_, reserved_);
    munmap(region_, reserved_);
  }
}

absl::StatusOr<PinnedSlot> PinnedPool::Acquire(int64_t bytes) {
  if (bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("offload pool: Acquire(", bytes, ")"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t c = 0; c < classes_.size(); ++c) {
    if (classes_[c].bytes < bytes) continue;
    if (free_[c].empty()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "offload pool: all %d slots of size class %d (%d bytes) are in use; a request of %d "
          "bytes must wait for one to be released (the pool never grows)",
          classes_[c].slots, c, classes_[c].bytes, bytes));
    }
    int index = free_[c].back();
    free_[c].pop_back();
    PinnedSlot slot;
    slot.pool_ = this;
    slot.data_ = static_cast<char*>(region_) + class_offset_[c] + index * capacity_[c];
    slot.bytes_ = bytes;
    slot.capacity_ = capacity_[c];
    slot.class_ = static_cast<int>(c);
    slot.index_ = index;
    in_use_ += capacity_[c];
    peak_ = std::max(peak_, in_use_);
    return slot;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "offload pool: a request of %d bytes exceeds the largest size class (%d bytes)", bytes,
      classes_.back().bytes));
}

void PinnedPool::Return(int size_class, int index) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[size_class].push_back(index);
  in_use_ -= capacity_[size_class];
}

int64_t PinnedPool::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

int64_t PinnedPool::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

int PinnedPool::free_slots(int size_class) const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(free_[size_class].size());
}

}  // namespace memtrain::offload
