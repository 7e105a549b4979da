#include "offload/tier_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "offload/pinned_pool.h"

namespace memtrain::offload {
namespace {

// A fresh directory under /tmp, removed (it must be empty by then) at the end.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/memtrain_offload_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { rmdir(path_.c_str()); }
  const std::string& path() const { return path_; }
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    DIR* d = opendir(path_.c_str());
    if (d == nullptr) return names;
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        names.push_back(e->d_name);
      }
    }
    closedir(d);
    return names;
  }

 private:
  std::string path_;
};

std::vector<char> Pattern(int64_t bytes, uint32_t seed) {
  std::vector<char> v(bytes);
  std::mt19937 rng(seed);
  for (char& c : v) c = static_cast<char>(rng());
  return v;
}

// Writes every block, then reads them back in a shuffled order, bit-exact; `aligned` reads and
// writes through 4096-aligned pool slots, otherwise through std::vector (usually unaligned + 0).
void RoundTrip(TierStore& store, bool aligned, uint32_t seed) {
  std::vector<std::vector<char>> data;
  for (int64_t b = 0; b < store.num_blocks(); ++b) {
    data.push_back(Pattern(store.block_bytes(b), seed + b));
  }
  int64_t largest = 1;
  for (int64_t b = 0; b < store.num_blocks(); ++b) {
    largest = std::max(largest, store.block_bytes(b));
  }
  auto pool = PinnedPool::Create({{.bytes = largest, .slots = 1}}, {.lock = false});
  ASSERT_TRUE(pool.ok());
  auto slot = (*pool)->Acquire(largest);
  ASSERT_TRUE(slot.ok());
  char* buf = static_cast<char*>(slot->data());
  for (int64_t b = 0; b < store.num_blocks(); ++b) {
    const int64_t n = store.block_bytes(b);
    if (aligned) {
      std::memcpy(buf, data[b].data(), n);
      ASSERT_TRUE(store.Write(b, buf, n).ok()) << b;
    } else {
      EXPECT_EQ(store.Write(b, data[b].data(), n + 1).code(), absl::StatusCode::kInvalidArgument);
      absl::Status st = store.Write(b, data[b].data(), n);
      ASSERT_TRUE(st.ok()) << st;
    }
  }
  std::vector<int64_t> order(store.num_blocks());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(seed));
  for (int64_t b : order) {
    const int64_t n = store.block_bytes(b);
    std::vector<char> out(n + 1, 0x5a);
    char* dst = aligned ? buf : out.data() + 1;  // unaligned on purpose
    if (aligned) std::memset(buf, 0x5a, slot->capacity());
    absl::Status st = store.Read(b, dst, n);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(std::memcmp(dst, data[b].data(), n), 0) << "block " << b;
    if (aligned && n < slot->capacity()) {
      ASSERT_EQ(buf[n], 0x5a) << "wrote past the block";
    }
    if (!aligned) {
      ASSERT_EQ(out[0], 0x5a);
    }
  }
}

std::vector<int64_t> OddSizes() {
  // Not multiples of 4096, smaller than a page, exactly a page, several chunks, and empty.
  return {1, 4095, 4096, 4097, 100000, (3 << 20) + 123, 0, 12288, 777777, 65536 + 5};
}

TEST(Crc32c, KnownValues) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xe3069283u);  // the standard check value
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::vector<char> v = Pattern(1000, 9);
  EXPECT_EQ(Crc32c(v.data() + 500, 500, Crc32c(v.data(), 500)), Crc32c(v.data(), 1000));
}

TEST(HostStore, RoundTripAndChecks) {
  auto store = HostStore::Create(OddSizes());
  ASSERT_TRUE(store.ok());
  RoundTrip(**store, /*aligned=*/false, 1);
  RoundTrip(**store, /*aligned=*/true, 2);
  std::vector<char> buf(10);
  EXPECT_EQ((*store)->Write(0, buf.data(), 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->Read(99, buf.data(), 1).code(), absl::StatusCode::kInvalidArgument);
  auto fresh = HostStore::Create({10});
  EXPECT_EQ((*fresh)->Read(0, buf.data(), 10).code(), absl::StatusCode::kFailedPrecondition);
}

struct Config {
  IoEngine engine;
  int queue_depth;
  int64_t chunk;
};

class SsdRoundTrip : public ::testing::TestWithParam<Config> {};

TEST_P(SsdRoundTrip, BitExactBothEnginesAndQueueDepths) {
  TempDir dir;
  const Config c = GetParam();
  {
    std::vector<int64_t> sizes = OddSizes();
    for (int i = 0; i < 40; ++i) sizes.push_back(1000 + 37 * i * i);  // many small blocks
    auto store = SsdStore::Create({.dir = dir.path(),
                                   .rank = 3,
                                   .block_bytes = sizes,
                                   .engine = c.engine,
                                   .queue_depth = c.queue_depth,
                                   .chunk_bytes = c.chunk});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->engine(), c.engine) << (*store)->fallback_reason();
    EXPECT_TRUE((*store)->direct()) << (*store)->Describe();  // /tmp is ext4 here
    EXPECT_NE((*store)->path().find("rank3"), std::string::npos);
    EXPECT_EQ(dir.Entries().size(), 1u);
    RoundTrip(**store, /*aligned=*/true, 10);
    RoundTrip(**store, /*aligned=*/false, 20);  // overwrite with new contents
  }
  EXPECT_TRUE(dir.Entries().empty()) << "left behind: " << dir.Entries()[0];
}

INSTANTIATE_TEST_SUITE_P(
    Engines, SsdRoundTrip,
    ::testing::Values(Config{IoEngine::kUring, 1, 1 << 20}, Config{IoEngine::kUring, 8, 1 << 20},
                      Config{IoEngine::kUring, 32, 65536}, Config{IoEngine::kThreads, 1, 1 << 20},
                      Config{IoEngine::kThreads, 8, 1 << 20},
                      Config{IoEngine::kThreads, 32, 65536}),
    [](const ::testing::TestParamInfo<Config>& info) {
      return std::string(IoEngineName(info.param.engine) == std::string("io_uring") ? "Uring"
                                                                                    : "Threads") +
             "Qd" + std::to_string(info.param.queue_depth) + "Chunk" +
             std::to_string(info.param.chunk);
    });

TEST(SsdStore, FlippedByteIsDataLossNamingBlockFileAndOffset) {
  TempDir dir;
  for (IoEngine engine : {IoEngine::kUring, IoEngine::kThreads}) {
    auto store = SsdStore::Create({.dir = dir.path(),
                                   .block_bytes = {5000, (2 << 20) + 10, 3000},
                                   .engine = engine,
                                   .chunk_bytes = 1 << 20});
    ASSERT_TRUE(store.ok()) << store.status();
    std::vector<std::vector<char>> data;
    for (int b = 0; b < 3; ++b) {
      data.push_back(Pattern((*store)->block_bytes(b), 100 + b));
      ASSERT_TRUE((*store)->Write(b, data[b].data(), data[b].size()).ok());
    }
    // Flip one byte in the second MiB of block 1, through a separate buffered descriptor.
    const int64_t flip = (*store)->data_offset(1) + (1 << 20) + 4321;
    int fd = open((*store)->path().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char byte = 0;
    ASSERT_EQ(pread(fd, &byte, 1, flip), 1);
    byte ^= 0x10;
    ASSERT_EQ(pwrite(fd, &byte, 1, flip), 1);
    ASSERT_EQ(fsync(fd), 0);
    close(fd);

    std::vector<char> out(data[1].size());
    absl::Status st = (*store)->Read(1, out.data(), out.size());
    ASSERT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    const std::string msg(st.message());
    EXPECT_NE(msg.find("block 1 "), std::string::npos) << msg;
    EXPECT_NE(msg.find((*store)->path()), std::string::npos) << msg;
    const int64_t chunk_start = (*store)->data_offset(1) + (1 << 20);
    EXPECT_NE(msg.find("byte offset " + std::to_string(chunk_start)), std::string::npos) << msg;
    // The other blocks are intact.
    std::vector<char> ok(data[0].size());
    EXPECT_TRUE((*store)->Read(0, ok.data(), ok.size()).ok());
    EXPECT_EQ(ok, data[0]);
    // A damaged header is caught too.
    fd = open((*store)->path().c_str(), O_RDWR);
    const int64_t hdr = (*store)->data_offset(2) - SsdStore::kHeader + 9;
    ASSERT_EQ(pwrite(fd, "x", 1, hdr), 1);
    close(fd);
    std::vector<char> out2(data[2].size());
    st = (*store)->Read(2, out2.data(), out2.size());
    ASSERT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_NE(st.message().find("block 2"), std::string::npos) << st;
    EXPECT_NE(st.message().find((*store)->path()), std::string::npos) << st;
  }
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(SsdStore, UnwrittenBlockIsAnErrorNotZeros) {
  TempDir dir;
  auto store = SsdStore::Create({.dir = dir.path(), .block_bytes = {8192}});
  ASSERT_TRUE(store.ok());
  std::vector<char> out(8192);
  EXPECT_EQ((*store)->Read(0, out.data(), 8192).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store)->Read(0, out.data(), 100).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->Write(1, out.data(), 100).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SsdStore, MissingDirectoryIsNamed) {
  auto store = SsdStore::Create({.dir = "/tmp/memtrain_no_such_dir_for_test", .block_bytes = {1}});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(store.status().message().find("/tmp/memtrain_no_such_dir_for_test"), std::string::npos)
      << store.status();
}

TEST(SsdStore, BadOptionsAreRefused) {
  TempDir dir;
  EXPECT_EQ(SsdStore::Create({.dir = dir.path(), .chunk_bytes = 1000}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SsdStore::Create({.dir = dir.path(), .queue_depth = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SsdStore::Create({.dir = dir.path(), .block_bytes = {-1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(SsdStore, FullDiskIsClearAtCreate) {
  TempDir dir;
  if (mount("tmpfs", dir.path().c_str(), "tmpfs", 0, "size=1M") != 0) {
    GTEST_SKIP() << "cannot mount a 1 MiB tmpfs on " << dir.path() << ": " << std::strerror(errno)
                 << " (needs root / CAP_SYS_ADMIN)";
  }
  {
    auto store = SsdStore::Create({.dir = dir.path(), .block_bytes = {600000, 600000}});
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), absl::StatusCode::kResourceExhausted) << store.status();
    EXPECT_NE(store.status().message().find(dir.path() + "/memtrain-offload-rank0-pid"),
              std::string::npos)
        << store.status();
    EXPECT_NE(store.status().message().find("1212416 bytes"), std::string::npos) << store.status();
    EXPECT_TRUE(dir.Entries().empty()) << "left behind: " << dir.Entries()[0];
    // What fits works there (tmpfs takes O_DIRECT on recent kernels, buffered IO otherwise).
    auto fits = SsdStore::Create({.dir = dir.path(), .block_bytes = {300000}});
    ASSERT_TRUE(fits.ok()) << fits.status();
    RoundTrip(**fits, true, 7);
  }
  EXPECT_TRUE(dir.Entries().empty());
  umount(dir.path().c_str());
}

TEST(SsdStore, FallsBackToBufferedIoWhenODirectIsRefused) {
  TempDir dir;
  // A file system that refuses O_DIRECT at open, as tmpfs did before Linux 6.6.
  auto refuse_direct = [](const char* path, int flags, int mode) {
    if (flags & O_DIRECT) {
      errno = EINVAL;
      return -1;
    }
    return open(path, flags, mode);
  };
  {
    auto store = SsdStore::Create(
        {.dir = dir.path(), .block_bytes = {4097, 123456}, .open_fn = refuse_direct});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_FALSE((*store)->direct());
    EXPECT_NE((*store)->fallback_reason().find("refuses O_DIRECT"), std::string::npos);
    RoundTrip(**store, false, 3);
    RoundTrip(**store, true, 4);
  }
  auto strict = SsdStore::Create({.dir = dir.path(),
                                  .block_bytes = {1},
                                  .direct_io = DirectIo::kRequire,
                                  .open_fn = refuse_direct});
  ASSERT_FALSE(strict.ok());
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(strict.status().message().find(dir.path()), std::string::npos);
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(SsdStore, FallsBackToThreadsWhenIoUringCannotStart) {
  TempDir dir;
  // io_uring refuses more than 32768 entries: the store falls back and says why.
  auto store = SsdStore::Create({.dir = dir.path(),
                                 .block_bytes = {10000, 20000},
                                 .engine = IoEngine::kUring,
                                 .queue_depth = 65536});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->engine(), IoEngine::kThreads);
  EXPECT_NE((*store)->fallback_reason().find("io_uring_queue_init(65536) failed"),
            std::string::npos)
      << (*store)->fallback_reason();
  RoundTrip(**store, false, 5);
}

TEST(SsdStore, FileGoesWithTheStore) {
  TempDir dir;
  std::string path;
  {
    auto store = SsdStore::Create({.dir = dir.path(), .rank = 1, .block_bytes = {100, 5000}});
    ASSERT_TRUE(store.ok());
    path = (*store)->path();
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    // Preallocated: header + data padded to 4096, per block.
    EXPECT_EQ(st.st_size, 4096 + 4096 + 4096 + 8192);
    EXPECT_EQ((*store)->file_bytes(), st.st_size);
    EXPECT_GE(st.st_blocks * 512, st.st_size);
  }
  struct stat st {};
  EXPECT_NE(stat(path.c_str(), &st), 0);
  EXPECT_TRUE(dir.Entries().empty());
}

}  // namespace
}  // namespace memtrain::offload
