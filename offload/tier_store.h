// Where offloaded blocks live between uses: host memory (HostStore) or one preallocated file per
// rank on an SSD (SsdStore), read and written with O_DIRECT through io_uring or a pread/pwrite
// thread pool.
//
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<SsdStore> ssd,
//                       SsdStore::Create({.dir = "/nvme/tmp", .rank = 0,
//                                         .block_bytes = {bytes0, bytes1, ...}}));
//   MT_RETURN_IF_ERROR(ssd->Write(1, slot.data(), bytes1));
//   MT_RETURN_IF_ERROR(ssd->Read(1, slot.data(), bytes1));  // DataLoss if the bytes changed
//
// The block ids are 0..block_bytes.size()-1 and every block has a fixed size, given at Create.
// Write and Read are synchronous (they return when the bytes are on the tier or in the buffer)
// and serialised per store; inside one call an SSD block is split into chunk_bytes requests with
// queue_depth of them in flight. Every written block carries a CRC-32C that Read verifies.
#ifndef MEMTRAIN_OFFLOAD_TIER_STORE_H_
#define MEMTRAIN_OFFLOAD_TIER_STORE_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace memtrain::offload {

class TierStore {
 public:
  virtual ~TierStore() = default;
  // `bytes` must equal the block's size. InvalidArgument for an unknown id or a wrong size.
  virtual absl::Status Write(int64_t block_id, const void* data, int64_t bytes) = 0;
  // FailedPrecondition for a block never written; DataLoss when its checksum does not match.
  virtual absl::Status Read(int64_t block_id, void* data, int64_t bytes) = 0;
  virtual int64_t num_blocks() const = 0;
  virtual int64_t block_bytes(int64_t block_id) const = 0;
  virtual std::string Describe() const = 0;
};

// Blocks in host memory (one allocation per block, made at Create).
class HostStore : public TierStore {
 public:
  static absl::StatusOr<std::unique_ptr<HostStore>> Create(std::vector<int64_t> block_bytes,
                                                           bool checksum = true);
  absl::Status Write(int64_t block_id, const void* data, int64_t bytes) override;
  absl::Status Read(int64_t block_id, void* data, int64_t bytes) override;
  int64_t num_blocks() const override { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_bytes(int64_t block_id) const override { return blocks_[block_id].bytes; }
  std::string Describe() const override;
  // The block's memory, for updating it in place (only in a store without checksums, where no
  // CRC would go stale); marks it written.
  void* data(int64_t block_id) {
    blocks_[block_id].written = true;
    return blocks_[block_id].data.get();
  }
  bool checksum() const { return checksum_; }

 private:
  struct Block {
    int64_t bytes = 0;
    std::unique_ptr<char[]> data;
    bool written = false;
    uint32_t crc = 0;
  };
  HostStore() = default;
  std::vector<Block> blocks_;
  bool checksum_ = true;
};

enum class IoEngine { kUring, kThreads };
const char* IoEngineName(IoEngine engine);
enum class DirectIo {
  kAuto,     // O_DIRECT; buffered IO (with a reason in fallback_reason()) if the file system
             // refuses it (EINVAL at open)
  kRequire,  // O_DIRECT or fail Create
  kOff,      // buffered IO
};

struct SsdStoreOptions {
  std::string dir;  // must exist; the file is created here and removed when the store goes
  int rank = 0;
  std::vector<int64_t> block_bytes = {};  // the size of block i
  IoEngine engine = IoEngine::kUring;  // kUring falls back to kThreads if io_uring is unavailable
  int queue_depth = 8;                 // requests in flight (and the thread count for kThreads)
  int64_t chunk_bytes = 1 << 20;       // bytes per request, a multiple of 4096
  DirectIo direct_io = DirectIo::kAuto;
  // Testing only: replaces open(2) (e.g. to simulate a file system that refuses O_DIRECT).
  std::function<int(const char* path, int flags, int mode)> open_fn = nullptr;
};

// One file per rank: <dir>/memtrain-offload-rank<R>-pid<P>.bin, preallocated (fallocate) at
// Create and unlinked by the destructor. Block i's extent is a 4096-byte header (magic, id,
// bytes, CRC-32C) then its data, padded to 4096; extents are laid out in id order.
class SsdStore : public TierStore {
 public:
  // NotFound naming the directory when it does not exist; ResourceExhausted naming the file and
  // the bytes when the file system cannot hold it (ENOSPC at fallocate); InvalidArgument for bad
  // options; FailedPrecondition when DirectIo::kRequire and O_DIRECT is refused.
  static absl::StatusOr<std::unique_ptr<SsdStore>> Create(SsdStoreOptions options);
  ~SsdStore() override;

  absl::Status Write(int64_t block_id, const void* data, int64_t bytes) override;
  absl::Status Read(int64_t block_id, void* data, int64_t bytes) override;
  int64_t num_blocks() const override { return static_cast<int64_t>(extents_.size()); }
  int64_t block_bytes(int64_t block_id) const override { return extents_[block_id].bytes; }
  std::string Describe() const override;

  const std::string& path() const { return path_; }
  int64_t file_bytes() const { return file_bytes_; }
  // The file offset of block i's data (its header is the 4096 bytes before it).
  int64_t data_offset(int64_t block_id) const { return extents_[block_id].offset + kHeader; }
  IoEngine engine() const { return engine_; }
  bool direct() const { return direct_; }
  // Why the engine or the IO mode is not what was asked for ("" when it is).
  const std::string& fallback_reason() const { return fallback_reason_; }

  static constexpr int64_t kHeader = 4096;

 private:
  struct Extent {
    int64_t offset = 0;  // of the header
    int64_t bytes = 0;
    bool written = false;
    uint32_t crc = 0;
    std::vector<uint32_t> chunk_crc;  // per chunk_bytes of data, to name where a mismatch is
  };
  struct IoReq {
    int64_t block;
    int64_t offset;
    char* buf;
    int64_t len;
  };
  class Uring;

  SsdStore() = default;
  absl::Status CheckBlock(int64_t block_id, int64_t bytes) const;
  absl::Status RunIo(bool write, std::vector<IoReq>& reqs);
  absl::Status RunUring(bool write, std::vector<IoReq>& reqs);
  absl::Status RunThreads(bool write, std::vector<IoReq>& reqs);
  absl::Status IoError(bool write, const IoReq& r, int err) const;
  void StartThreads();
  void StopThreads();

  SsdStoreOptions options_;
  std::string path_;
  int fd_ = -1;
  int64_t file_bytes_ = 0;
  bool direct_ = false;
  IoEngine engine_ = IoEngine::kThreads;
  std::string fallback_reason_;
  std::vector<Extent> extents_;
  std::unique_ptr<Uring> uring_;
  char* staging_ = nullptr;  // header page + tail page, 4096-aligned
  std::mutex io_mu_;         // serialises Write / Read

  // kThreads: workers that take requests from the current job.
  std::vector<std::thread> workers_;
  std::mutex job_mu_;
  std::condition_variable job_cv_, done_cv_;
  std::vector<IoReq>* job_ = nullptr;
  bool job_write_ = false;
  size_t job_next_ = 0;
  size_t job_done_ = 0;
  int64_t job_generation_ = 0;
  absl::Status job_status_;
  bool stop_ = false;
};

// CRC-32C (Castagnoli; SSE4.2 instructions where the build has them, else bitwise) of `bytes`
// bytes, continuing from `crc` (0 to start).
uint32_t Crc32c(const void* data, int64_t bytes, uint32_t crc = 0);

}  // namespace memtrain::offload

#endif  // MEMTRAIN_OFFLOAD_TIER_STORE_H_
