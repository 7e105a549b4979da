#include "offload/tier_store.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "offload/pinned_pool.h"

namespace memtrain::offload {
namespace {

constexpr uint64_t kMagic = 0x4b4c424f5254454dULL;  // "MTEROBLK"

struct Header {
  uint64_t magic;
  int64_t block_id;
  int64_t bytes;
  uint32_t crc;
};

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char, AlignedFree>;

AlignedBuffer AllocAligned(int64_t bytes) {
  return AlignedBuffer(
      static_cast<char*>(std::aligned_alloc(kIoAlignment, RoundUpToIoAlignment(bytes))));
}

bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kIoAlignment == 0; }

}  // namespace

uint32_t Crc32c(const void* data, int64_t bytes, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
#if defined(__SSE4_2__)
  // One stream of the SSE4.2 instruction, 8 bytes at a time.
  while (bytes >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    crc = static_cast<uint32_t>(_mm_crc32_u64(crc, v));
    p += 8;
    bytes -= 8;
  }
  while (bytes > 0) {
    crc = _mm_crc32_u8(crc, *p++);
    --bytes;
  }
#else
  while (bytes > 0) {
    crc ^= *p++;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    --bytes;
  }
#endif
  return ~crc;
}

const char* IoEngineName(IoEngine engine) {
  return engine == IoEngine::kUring ? "io_uring" : "threads";
}

// ---- HostStore --------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<HostStore>> HostStore::Create(std::vector<int64_t> block_bytes,
                                                             bool checksum) {
  std::unique_ptr<HostStore> store(new HostStore());
  store->checksum_ = checksum;
  for (size_t i = 0; i < block_bytes.size(); ++i) {
    if (block_bytes[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("HostStore: block ", i, " has negative size ", block_bytes[i]));
    }
    Block b;
    b.bytes = block_bytes[i];
    b.data.reset(new (std::nothrow) char[std::max<int64_t>(b.bytes, 1)]);
    if (b.data == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("HostStore: cannot allocate ", b.bytes, " bytes for block ", i));
    }
    store->blocks_.push_back(std::move(b));
  }
  return store;
}

absl::Status HostStore::Write(int64_t block_id, const void* data, int64_t bytes) {
  if (block_id < 0 || block_id >= num_blocks() || bytes != blocks_[block_id].bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostStore::Write: block ", block_id, " of ", bytes, " bytes; the store has ",
                     num_blocks(), " blocks",
                     block_id >= 0 && block_id < num_blocks()
                         ? absl::StrCat(" and this one is ", blocks_[block_id].bytes, " bytes")
                         : std::string()));
  }
  Block& b = blocks_[block_id];
  std::memcpy(b.data.get(), data, bytes);
  if (checksum_) b.crc = Crc32c(data, bytes);
  b.written = true;
  return absl::OkStatus();
}

absl::Status HostStore::Read(int64_t block_id, void* data, int64_t bytes) {
  if (block_id < 0 || block_id >= num_blocks() || bytes != blocks_[block_id].bytes) {
    return absl::InvalidArgumentError(absl::StrCat("HostStore::Read: block ", block_id, " of ",
                                                   bytes, " bytes does not match the store"));
  }
  Block& b = blocks_[block_id];
  if (!b.written) {
    return absl::FailedPreconditionError(
        absl::StrCat("HostStore::Read: block ", block_id, " was never written"));
  }
  std::memcpy(data, b.data.get(), bytes);
  if (checksum_) {
    uint32_t crc = Crc32c(data, bytes);
    if (crc != b.crc) {
      return absl::DataLossError(absl::StrFormat(
          "HostStore: block %d (host memory at %p) fails its checksum: stored %08x, read %08x",
          block_id, static_cast<const void*>(b.data.get()), b.crc, crc));
    }
  }
  return absl::OkStatus();
}

std::string HostStore::Describe() const {
  int64_t total = 0;
  for (const Block& b : blocks_) total += b.bytes;
  return absl::StrCat("host memory, ", num_blocks(), " blocks, ", total, " bytes",
                      checksum_ ? ", CRC-32C checked" : "");
}

// ---- SsdStore ---------------------------------------------------------------------------------

class SsdStore::Uring {
 public:
  io_uring ring;
  unsigned entries = 0;
};

absl::StatusOr<std::unique_ptr<SsdStore>> SsdStore::Create(SsdStoreOptions options) {
  if (options.queue_depth < 1 || options.queue_depth > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SsdStoreOptions::queue_depth must be in [1, 65536], got ", options.queue_depth));
  }
  if (options.chunk_bytes <= 0 || options.chunk_bytes % kIoAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SsdStoreOptions::chunk_bytes must be a positive multiple of 4096, got ",
                     options.chunk_bytes));
  }
  for (size_t i = 0; i < options.block_bytes.size(); ++i) {
    if (options.block_bytes[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("SsdStoreOptions::block_bytes[", i,
                                                     "] is negative: ", options.block_bytes[i]));
    }
  }
  struct stat st {};
  if (options.dir.empty() || stat(options.dir.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("SSD offload directory '", options.dir,
                     "' does not exist (SsdStoreOptions::dir): ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("SSD offload path '", options.dir, "' is not a directory"));
  }

  std::unique_ptr<SsdStore> store(new SsdStore());
  store->path_ = absl::StrFormat("%s/memtrain-offload-rank%d-pid%d.bin", options.dir, options.rank,
                                 static_cast<int>(getpid()));
  auto do_open = [&](int flags) {
    return options.open_fn ? options.open_fn(store->path_.c_str(), flags, 0600)
                           : open(store->path_.c_str(), flags, 0600);
  };
  const int base = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;
  int fd = -1;
  if (options.direct_io != DirectIo::kOff) {
    fd = do_open(base | O_DIRECT);
    if (fd < 0 && errno == EINVAL) {
      int err = errno;
      unlink(store->path_.c_str());  // some file systems create the file before refusing
      if (options.direct_io == DirectIo::kRequire) {
        return absl::FailedPreconditionError(absl::StrCat(
            "SSD offload file '", store->path_, "': the file system refuses O_DIRECT (",
            std::strerror(err), ") and SsdStoreOptions::direct_io is kRequire"));
      }
      store->fallback_reason_ = absl::StrCat("buffered IO: the file system under '", options.dir,
                                             "' refuses O_DIRECT (", std::strerror(err), ")");
      fd = do_open(base);
    } else {
      store->direct_ = fd >= 0;
    }
  } else {
    fd = do_open(base);
  }
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create SSD offload file '",
                                                    store->path_, "': ", std::strerror(errno)));
  }
  store->fd_ = fd;  // from here the destructor closes and unlinks it

  int64_t offset = 0;
  for (int64_t bytes : options.block_bytes) {
    Extent e;
    e.offset = offset;
    e.bytes = bytes;
    store->extents_.push_back(std::move(e));
    offset += kHeader + RoundUpToIoAlignment(bytes);
  }
  store->file_bytes_ = offset;
  if (offset > 0 && fallocate(fd, 0, 0, offset) != 0) {
    int err = errno;
    std::string msg = absl::StrCat("cannot preallocate ", offset, " bytes for SSD offload file '",
                                   store->path_, "': ", std::strerror(err));
    if (err == ENOSPC || err == EFBIG || err == EDQUOT) {
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, " (free space in '", options.dir, "' or point ssd_path elsewhere)"));
    }
    return absl::InternalError(msg);
  }
  store->staging_ = static_cast<char*>(std::aligned_alloc(kIoAlignment, 2 * kIoAlignment));

  store->engine_ = options.engine;
  if (options.engine == IoEngine::kUring) {
    auto u = std::make_unique<Uring>();
    int rc = io_uring_queue_init(options.queue_depth, &u->ring, 0);
    if (rc < 0) {
      store->engine_ = IoEngine::kThreads;
      absl::StrAppend(&store->fallback_reason_, store->fallback_reason_.empty() ? "" : "; ",
                      "pread/pwrite threads: io_uring_queue_init(", options.queue_depth,
                      ") failed: ", std::strerror(-rc));
    } else {
      u->entries = options.queue_depth;
      store->uring_ = std::move(u);
    }
  }
  store->options_ = std::move(options);
  if (store->engine_ == IoEngine::kThreads) store->StartThreads();
  return store;
}

SsdStore::~SsdStore() {
  StopThreads();
  if (uring_ != nullptr) io_uring_queue_exit(&uring_->ring);
  if (fd_ >= 0) {
    close(fd_);
    unlink(path_.c_str());
  }
  std::free(staging_);
}

void SsdStore::StartThreads() {
  int n = std::min(options_.queue_depth, 64);
  for (int i = 0; i < n; ++i) {
    workers_.emplace_back([this] {
      std::unique_lock<std::mutex> lock(job_mu_);
      while (true) {
        job_cv_.wait(lock, [this] { return stop_ || (job_ && job_next_ < job_->size()); });
        if (stop_) return;
        IoReq r = (*job_)[job_next_++];
        bool write = job_write_;
        lock.unlock();
        absl::Status status;
        int64_t done = 0;
        while (done < r.len) {
          ssize_t n = write ? pwrite(fd_, r.buf + done, r.len - done, r.offset + done)
                            : pread(fd_, r.buf + done, r.len - done, r.offset + done);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            IoReq rest{r.block, r.offset + done, r.buf + done, r.len - done};
            status = IoError(write, rest, n < 0 ? errno : 0);
            break;
          }
          done += n;
        }
        lock.lock();
        if (!status.ok() && job_status_.ok()) job_status_ = status;
        if (++job_done_ == job_->size()) done_cv_.notify_all();
      }
    });
  }
}

void SsdStore::StopThreads() {
  {
    std::lock_guard<std::mutex> lock(job_mu_);
    stop_ = true;
  }
  job_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

absl::Status SsdStore::IoError(bool write, const IoReq& r, int err) const {
  std::string what = err == 0 ? std::string(write ? "wrote nothing" : "unexpected end of file")
                              : std::string(std::strerror(err));
  std::string msg = absl::StrFormat(
      "SSD offload %s of block %d failed at byte offset %d (%d bytes) of '%s' (%s IO, %s): %s",
      write ? "write" : "read", r.block, r.offset, r.len, path_, direct_ ? "O_DIRECT" : "buffered",
      IoEngineName(engine_), what);
  if (err == ENOSPC || err == EFBIG || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::DataLossError(msg);
}

absl::Status SsdStore::RunThreads(bool write, std::vector<IoReq>& reqs) {
  std::unique_lock<std::mutex> lock(job_mu_);
  job_ = &reqs;
  job_write_ = write;
  job_next_ = 0;
  job_done_ = 0;
  job_status_ = absl::OkStatus();
  job_cv_.notify_all();
  done_cv_.wait(lock, [&] { return job_done_ == reqs.size(); });
  job_ = nullptr;
  return job_status_;
}

absl::Status SsdStore::RunUring(bool write, std::vector<IoReq>& reqs) {
  io_uring* ring = &uring_->ring;
  size_t next = 0, outstanding = 0;
  absl::Status status;
  auto prep = [&](size_t i) -> bool {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (sqe == nullptr) return false;
    const IoReq& r = reqs[i];
    if (write) {
      io_uring_prep_write(sqe, fd_, r.buf, static_cast<unsigned>(r.len), r.offset);
    } else {
      io_uring_prep_read(sqe, fd_, r.buf, static_cast<unsigned>(r.len), r.offset);
    }
    io_uring_sqe_set_data64(sqe, i);
    return true;
  };
  while (next < reqs.size() || outstanding > 0) {
    while (status.ok() && next < reqs.size() && outstanding < uring_->entries && prep(next)) {
      ++next;
      ++outstanding;
    }
    int rc = io_uring_submit(ring);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // Nothing more can be submitted; reap what is in flight and report.
      if (status.ok()) status = IoError(write, reqs[next > 0 ? next - 1 : 0], -rc);
    }
    if (outstanding == 0) break;
    io_uring_cqe* cqe = nullptr;
    rc = io_uring_wait_cqe(ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return absl::InternalError(absl::StrCat("io_uring_wait_cqe: ", strerror(-rc)));
    size_t i = io_uring_cqe_get_data64(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    --outstanding;
    IoReq& r = reqs[i];
    if (res == -EAGAIN || res == -EINTR) {
      if (prep(i)) ++outstanding;
      continue;
    }
    if (res <= 0) {
      if (status.ok()) status = IoError(write, r, -res);
      continue;
    }
    if (res < r.len) {  // short transfer: ask for the rest
      r.offset += res;
      r.buf += res;
      r.len -= res;
      if (status.ok() && prep(i)) ++outstanding;
    }
  }
  return status;
}

absl::Status SsdStore::RunIo(bool write, std::vector<IoReq>& reqs) {
  if (reqs.empty()) return absl::OkStatus();
  return engine_ == IoEngine::kUring ? RunUring(write, reqs) : RunThreads(write, reqs);
}

absl::Status SsdStore::CheckBlock(int64_t block_id, int64_t bytes) const {
  if (block_id < 0 || block_id >= num_blocks()) {
    return absl::InvalidArgumentError(absl::StrCat("SsdStore: block ", block_id,
                                                   " out of range; the store has ", num_blocks(),
                                                   " blocks (file '", path_, "')"));
  }
  if (bytes != extents_[block_id].bytes) {
    return absl::InvalidArgumentError(absl::StrCat("SsdStore: block ", block_id, " is ",
                                                   extents_[block_id].bytes, " bytes, not ", bytes,
                                                   " (file '", path_, "')"));
  }
  return absl::OkStatus();
}

absl::Status SsdStore::Write(int64_t block_id, const void* data, int64_t bytes) {
  MT_RETURN_IF_ERROR(CheckBlock(block_id, bytes));
  std::lock_guard<std::mutex> lock(io_mu_);
  Extent& e = extents_[block_id];
  const int64_t chunk = options_.chunk_bytes;
  e.chunk_crc.clear();
  for (int64_t off = 0; off < bytes; off += chunk) {
    int64_t n = std::min(chunk, bytes - off);
    e.chunk_crc.push_back(Crc32c(static_cast<const char*>(data) + off, n));
  }
  // The block's checksum (in the header): the CRC-32C of its per-chunk CRCs.
  const uint32_t crc = Crc32c(e.chunk_crc.data(), e.chunk_crc.size() * sizeof(uint32_t));

  // The header page, then the data: straight from `data` when it is 4096-aligned (the tail
  // through a staging page), else through an aligned copy.
  std::memset(staging_, 0, kHeader);
  Header h{kMagic, block_id, bytes, crc};
  std::memcpy(staging_, &h, sizeof(h));
  std::vector<IoReq> reqs;
  reqs.push_back({block_id, e.offset, staging_, kHeader});
  AlignedBuffer copy;
  const char* src = static_cast<const char*>(data);
  int64_t direct_bytes = bytes / kIoAlignment * kIoAlignment;
  if (!IsAligned(data)) {
    copy = AllocAligned(bytes);
    if (copy == nullptr) return absl::ResourceExhaustedError("SsdStore: no memory for a copy");
    std::memcpy(copy.get(), data, bytes);
    std::memset(copy.get() + bytes, 0, RoundUpToIoAlignment(bytes) - bytes);
    src = copy.get();
    direct_bytes = RoundUpToIoAlignment(bytes);
  }
  const int64_t data_off = e.offset + kHeader;
  for (int64_t off = 0; off < direct_bytes; off += chunk) {
    reqs.push_back({block_id, data_off + off, const_cast<char*>(src) + off,
                    std::min(chunk, direct_bytes - off)});
  }
  if (direct_bytes < bytes) {
    char* tail = staging_ + kHeader;
    std::memset(tail, 0, kIoAlignment);
    std::memcpy(tail, src + direct_bytes, bytes - direct_bytes);
    reqs.push_back({block_id, data_off + direct_bytes, tail, kIoAlignment});
  }
  e.written = false;  // a failed write leaves the block unreadable, never stale
  MT_RETURN_IF_ERROR(RunIo(/*write=*/true, reqs));
  e.crc = crc;
  e.written = true;
  return absl::OkStatus();
}

absl::Status SsdStore::Read(int64_t block_id, void* data, int64_t bytes) {
  MT_RETURN_IF_ERROR(CheckBlock(block_id, bytes));
  std::lock_guard<std::mutex> lock(io_mu_);
  Extent& e = extents_[block_id];
  if (!e.written) {
    return absl::FailedPreconditionError(
        absl::StrCat("SsdStore: block ", block_id,
                     " was never written (or its last write failed) in '", path_, "'"));
  }
  const int64_t chunk = options_.chunk_bytes;
  std::vector<IoReq> reqs;
  reqs.push_back({block_id, e.offset, staging_, kHeader});
  AlignedBuffer copy;
  char* dst = static_cast<char*>(data);
  int64_t direct_bytes = bytes / kIoAlignment * kIoAlignment;
  if (!IsAligned(data)) {
    copy = AllocAligned(bytes);
    if (copy == nullptr) return absl::ResourceExhaustedError("SsdStore: no memory for a copy");
    dst = copy.get();
    direct_bytes = RoundUpToIoAlignment(bytes);
  }
  const int64_t data_off = e.offset + kHeader;
  for (int64_t off = 0; off < direct_bytes; off += chunk) {
    reqs.push_back({block_id, data_off + off, dst + off, std::min(chunk, direct_bytes - off)});
  }
  char* tail = staging_ + kHeader;
  if (direct_bytes < bytes) {
    reqs.push_back({block_id, data_off + direct_bytes, tail, kIoAlignment});
  }
  MT_RETURN_IF_ERROR(RunIo(/*write=*/false, reqs));
  if (direct_bytes < bytes) std::memcpy(dst + direct_bytes, tail, bytes - direct_bytes);
  if (copy != nullptr) std::memcpy(data, copy.get(), bytes);

  Header h;
  std::memcpy(&h, staging_, sizeof(h));
  if (h.magic != kMagic || h.block_id != block_id || h.bytes != bytes || h.crc != e.crc) {
    return absl::DataLossError(absl::StrFormat(
        "SSD offload block %d: its header at byte offset %d of '%s' is damaged (magic %x, id %d, "
        "%d bytes, crc %08x; expected id %d, %d bytes, crc %08x)",
        block_id, e.offset, path_, h.magic, h.block_id, h.bytes, h.crc, block_id, bytes, e.crc));
  }
  for (size_t c = 0; c < e.chunk_crc.size(); ++c) {
    int64_t off = static_cast<int64_t>(c) * chunk;
    int64_t n = std::min(chunk, bytes - off);
    uint32_t got = Crc32c(static_cast<const char*>(data) + off, n);
    if (got != e.chunk_crc[c]) {
      return absl::DataLossError(absl::StrFormat(
          "SSD offload block %d fails its checksum: bytes [%d, %d) of the block, at byte offset "
          "%d of '%s', read back CRC-32C %08x, written %08x",
          block_id, off, off + n, data_off + off, path_, got, e.chunk_crc[c]));
    }
  }
  return absl::OkStatus();
}

std::string SsdStore::Describe() const {
  return absl::StrCat("SSD file '", path_, "', ", num_blocks(), " blocks, ", file_bytes_,
                      " bytes, ", direct_ ? "O_DIRECT" : "buffered", ", ", IoEngineName(engine_),
                      " engine, queue depth ", options_.queue_depth, ", ", options_.chunk_bytes,
                      "-byte requests",
                      fallback_reason_.empty() ? "" : absl::StrCat(" (", fallback_reason_, ")"));
}

}  // namespace memtrain::offload
