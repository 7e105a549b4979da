// SSD tier bandwidth and pinned-pool size, next to what the disk and ZeRO-Infinity do.
//
//   bench_offload_io [--dir /tmp] [--blocks 64] [--block_mib 16]
//
// For each engine (io_uring, pread/pwrite threads) and queue depth 1, 8, 32: writes then reads
// N blocks through an SsdStore (O_DIRECT, 1 MiB requests, CRC-32 on every block) and prints GB/s.
// In the same run it writes a file of the same size in the same directory, reads it with
// `dd iflag=direct bs=1M` and prints each read figure as a fraction of dd's. Last, the pinned
// pool for GPT-2 124M's block sizes against a ZeRO-Infinity-style pool of max-size slots.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/model/gpt2.h"
#include "offload/pinned_pool.h"
#include "offload/tier_store.h"

using memtrain::offload::IoEngine;
using memtrain::offload::IoEngineName;
using memtrain::offload::PinnedPool;
using memtrain::offload::SsdStore;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// dd's read bandwidth (GB/s) over a fresh file of `bytes` in `dir`, -1 on failure.
double DdRead(const std::string& dir, int64_t bytes) {
  std::string path = absl::StrCat(dir, "/memtrain-bench-dd-", getpid(), ".bin");
  int64_t mib = bytes >> 20;
  std::string write = absl::StrCat("dd if=/dev/urandom of=", path, " bs=1M count=", mib,
                                   " oflag=direct status=none");
  if (std::system(write.c_str()) != 0) return -1;
  std::string read = absl::StrCat("dd if=", path, " of=/dev/null iflag=direct bs=1M 2>&1");
  double t0 = Now();
  FILE* p = popen(read.c_str(), "r");
  std::string out;
  char line[512];
  while (p != nullptr && fgets(line, sizeof(line), p) != nullptr) out += line;
  int rc = p != nullptr ? pclose(p) : -1;
  double t = Now() - t0;
  unlink(path.c_str());
  if (rc != 0) return -1;
  std::printf("  dd: %s", out.substr(out.rfind('\n', out.size() - 2) + 1).c_str());
  return bytes / t / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp";
  int blocks = 64;
  int block_mib = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--dir")
      dir = argv[i + 1];
    else if (flag == "--blocks")
      blocks = std::atoi(argv[i + 1]);
    else if (flag == "--block_mib")
      block_mib = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--dir D] [--blocks N] [--block_mib M]\n", argv[0]);
      return 2;
    }
  }
  const int64_t block = int64_t{block_mib} << 20;
  const int64_t total = block * blocks;
  std::printf("SSD tier: %d blocks x %d MiB = %.2f GB in %s\n", blocks, block_mib, total / 1e9,
              dir.c_str());

  auto pool = PinnedPool::Create({{.bytes = block, .slots = 1}}, {});
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n", std::string(pool.status().message()).c_str());
    return 1;
  }
  auto slot = (*pool)->Acquire(block);
  char* buf = static_cast<char*>(slot->data());
  for (int64_t i = 0; i < block; ++i) buf[i] = static_cast<char>(i * 2654435761u >> 13);

  const double dd = DdRead(dir, total);
  std::printf("  dd iflag=direct bs=1M read: %.2f GB/s\n", dd);
  std::printf("%-9s %3s %12s %12s %14s\n", "engine", "qd", "write GB/s", "read GB/s", "read / dd");
  for (IoEngine engine : {IoEngine::kUring, IoEngine::kThreads}) {
    for (int qd : {1, 8, 32}) {
      auto store = SsdStore::Create({.dir = dir,
                                     .block_bytes = std::vector<int64_t>(blocks, block),
                                     .engine = engine,
                                     .queue_depth = qd});
      if (!store.ok()) {
        std::fprintf(stderr, "%s\n", std::string(store.status().message()).c_str());
        return 1;
      }
      double t0 = Now();
      for (int b = 0; b < blocks; ++b) {
        if (auto st = (*store)->Write(b, buf, block); !st.ok()) {
          std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
          return 1;
        }
      }
      double tw = Now() - t0;
      t0 = Now();
      for (int b = 0; b < blocks; ++b) {
        if (auto st = (*store)->Read(b, buf, block); !st.ok()) {
          std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
          return 1;
        }
      }
      double tr = Now() - t0;
      double read = total / tr / 1e9;
      std::printf("%-9s %3d %12.2f %12.2f %13.0f%%%s\n", IoEngineName((*store)->engine()), qd,
                  total / tw / 1e9, read, dd > 0 ? 100 * read / dd : 0.0,
                  (*store)->fallback_reason().empty()
                      ? ""
                      : ("  (" + (*store)->fallback_reason() + ")").c_str());
    }
  }
  slot->Release();

  // GPT-2 124M: the pool for prefetch depth 2 + 1 write in flight vs ZeRO-style max-size slots.
  auto model = memtrain::core::GPT2::Create(memtrain::core::GPT2Config{});
  if (!model.ok()) return 1;
  const int depth = 2, writes = 1;
  auto classes = memtrain::offload::SizeClassesForModel(**model, depth, writes);
  int64_t ours = 0;
  std::printf("\nGPT-2 124M pinned pool (prefetch depth %d + %d write in flight, f32):\n", depth,
              writes);
  for (const auto& c : *classes) {
    std::printf("  class %12lld bytes x %d slots\n", static_cast<long long>(c.bytes), c.slots);
    ours += memtrain::offload::RoundUpToIoAlignment(c.bytes) * c.slots;
  }
  const int buffers = memtrain::offload::ZeroStyleBufferCount(**model, depth, writes);
  const int64_t zero = memtrain::offload::ZeroStylePoolBytes(**model, buffers);
  const int64_t zero5 = memtrain::offload::ZeroStylePoolBytes(**model, 5);
  const int64_t maxslot = memtrain::offload::MaxSlotPoolBytes(*classes);
  std::printf("  size-class pool:                               %8.1f MB\n", ours / 1e6);
  std::printf("  ZeRO-style, %3d tensor slots of the largest tensor: %8.1f MB (%.0f%% less)\n",
              buffers, zero / 1e6, 100.0 * (1 - double(ours) / zero));
  std::printf(
      "  max-size block slots (%d of the largest block):  %8.1f MB (%.0f%% less)\n",
      static_cast<int>(maxslot / memtrain::offload::RoundUpToIoAlignment((*classes).back().bytes)),
      maxslot / 1e6, 100.0 * (1 - double(ours) / maxslot));
  std::printf(
      "  (DeepSpeed's default buffer_count 5 at the largest tensor: %.1f MB, which holds\n"
      "   5 tensors, not one 12-tensor layer)\n",
      zero5 / 1e6);
  return 0;
}
