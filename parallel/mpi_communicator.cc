// The MPI communicator. All MPI calls of the process run on one executor thread, in the order
// they were issued: collectives become asynchronous (the caller computes while the thread
// communicates), MPI only needs MPI_THREAD_SERIALIZED, and the order is the same on every rank
// as long as the ranks issue operations in the same order. If the library grants less than
// SERIALIZED, operations run on the calling thread instead (correct, without overlap).
#include <mpi.h>

#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "core/status.h"
#include "parallel/communicator.h"

// The one place MPI return codes become Status.
#define MT_MPI_RETURN_IF_ERROR(call)                              \
  do {                                                            \
    int mt_mpi_rc_ = (call);                                      \
    if (mt_mpi_rc_ != MPI_SUCCESS) {                              \
      char mt_msg_[MPI_MAX_ERROR_STRING];                         \
      int mt_len_ = 0;                                            \
      MPI_Error_string(mt_mpi_rc_, mt_msg_, &mt_len_);            \
      return absl::UnavailableError(                              \
          absl::StrFormat("%s failed: %s; check that every rank " \
                          "is alive and issues the same calls",   \
                          #call, std::string(mt_msg_, mt_len_))); \
    }                                                             \
  } while (0)

namespace memtrain::parallel {
namespace {

using Op = std::function<absl::Status()>;

// Runs every MPI call of the process, in order.
class Executor {
 public:
  static Executor& Get() {
    static Executor* e = new Executor;
    return *e;
  }

  absl::Status Init() {
    std::lock_guard<std::mutex> lock(init_mu_);
    if (initialized_) return init_status_;
    initialized_ = true;
    int already = 0;
    MPI_Initialized(&already);
    int provided = MPI_THREAD_SINGLE;
    int rc = already ? MPI_Query_thread(&provided)
                     : MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
      init_status_ =
          absl::UnavailableError("MPI_Init_thread failed; is the job started by mpirun?");
      return init_status_;
    }
    owns_mpi_ = !already;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (provided >= MPI_THREAD_SERIALIZED) thread_ = std::thread([this] { Loop(); });
    return init_status_;
  }

  // `what` names the operation for the watchdog's report ("AllReduce of 1024 f32 over 2 ranks").
  Work Submit(std::string what, Op op) {
    auto promise = std::make_shared<std::promise<absl::Status>>();
    Work w(promise->get_future().share());
    if (!thread_.joinable()) {
      Begin(what);
      promise->set_value(op());
      End();
      return w;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back([this, what = std::move(what), op = std::move(op), promise] {
        Begin(what);
        promise->set_value(op());
        End();
      });
    }
    cv_.notify_one();
    return w;
  }

  // The watchdog: an MPI operation running longer than `seconds` is reported (what, how long,
  // this rank) and ends the process with exit code 3; mpirun then stops every other rank. A rank
  // that is stopped (SIGSTOP), hung or dead is the one that does not print the report. 0 = off.
  void SetTimeout(double seconds) {
    std::lock_guard<std::mutex> lock(watch_mu_);
    timeout_s_ = seconds;
    if (seconds > 0 && !watchdog_.joinable()) {
      watchdog_ = std::thread([this] { Watch(); });
      watchdog_.detach();  // lives as long as the process; never blocks exit
    }
    watch_cv_.notify_one();
  }

  void Shutdown() {
    if (thread_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
      }
      cv_.notify_one();
      thread_.join();
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) MPI_Finalize();
  }

  bool initialized() const { return initialized_; }

 private:
  using Clock = std::chrono::steady_clock;

  void Begin(const std::string& what) {
    std::lock_guard<std::mutex> lock(watch_mu_);
    current_ = what;
    started_ = Clock::now();
    ++sequence_;
    busy_ = true;
  }
  void End() {
    std::lock_guard<std::mutex> lock(watch_mu_);
    busy_ = false;
  }

  void Watch() {
    std::unique_lock<std::mutex> lock(watch_mu_);
    for (;;) {
      const double timeout = timeout_s_;
      watch_cv_.wait_for(lock, std::chrono::milliseconds(timeout > 0 && timeout < 10
                                                             ? static_cast<int>(timeout * 100)
                                                             : 1000));
      if (!busy_ || timeout_s_ <= 0) continue;
      const double waited = std::chrono::duration<double>(Clock::now() - started_).count();
      if (waited < timeout_s_) continue;
      int rank = -1;
      if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) rank = std::atoi(r);
      if (const char* r = std::getenv("PMI_RANK")) rank = std::atoi(r);
      std::fprintf(stderr,
                   "memtrain: rank %d: collective timeout: %s (operation %lld of this rank) has "
                   "waited %.0f s, more than parallel.collective_timeout_s = %.0f s. The ranks "
                   "that print no such line are the ones not taking part: stopped, hung or dead. "
                   "Stopping the job (exit 3); resume from the last checkpoint with --resume.\n",
                   rank, current_.c_str(), static_cast<long long>(sequence_), waited, timeout_s_);
      std::fflush(stderr);
      std::_Exit(3);
    }
  }

  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and drained
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex init_mu_;
  bool initialized_ = false;
  bool owns_mpi_ = false;
  absl::Status init_status_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  // The watchdog's view of the operation in MPI (guarded by watch_mu_).
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::thread watchdog_;
  double timeout_s_ = 0;
  bool busy_ = false;
  std::string current_;
  Clock::time_point started_;
  int64_t sequence_ = 0;
};

MPI_Datatype ToMpi(core::DType t) {
  switch (t) {
    case core::DType::kF32:
      return MPI_FLOAT;
    case core::DType::kF64:
      return MPI_DOUBLE;
    case core::DType::kI32:
      return MPI_INT32_T;
    case core::DType::kU16:
    case core::DType::kBF16:
      return MPI_UINT16_T;
    case core::DType::kU8:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

absl::Status CheckCount(int64_t n, const char* what) {
  if (n < 0 || n > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d elements exceed MPI's int count; split the buffer", what, n));
  }
  return absl::OkStatus();
}

// MPI counts are ints: runs fn(pointer, count) over chunks of at most 2^30 elements.
template <typename Fn>
absl::Status ForEachChunk(void* data, int64_t count, core::DType dtype, Fn fn) {
  const int64_t chunk = int64_t{1} << 30;
  char* p = static_cast<char*>(data);
  for (int64_t off = 0; off < count; off += chunk) {
    MT_RETURN_IF_ERROR(
        fn(p + off * core::DTypeSize(dtype), static_cast<int>(std::min(chunk, count - off))));
  }
  return absl::OkStatus();
}

std::vector<int> ToInts(const std::vector<int64_t>& v) {
  return std::vector<int>(v.begin(), v.end());
}

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    // Even local MPI calls go through the executor: only one thread may be inside MPI.
    Executor::Get()
        .Submit("MPI_Comm_rank",
                [this] {
                  MPI_Comm_rank(comm_, &rank_);
                  MPI_Comm_size(comm_, &size_);
                  return absl::OkStatus();
                })
        .Wait()
        .IgnoreError();
  }
  ~MpiCommunicator() override {
    if (comm_ != MPI_COMM_WORLD) {
      MPI_Comm c = comm_;
      Executor::Get()
          .Submit("MPI_Comm_free",
                  [c]() mutable {
                    MPI_Comm_free(&c);
                    return absl::OkStatus();
                  })
          .Wait()
          .IgnoreError();
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Work AllReduce(void* data, int64_t count, core::DType dtype, ReduceOp op) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(Describe("AllReduce", count, dtype), [=]() {
      return ForEachChunk(data, count, dtype, [&](char* p, int n) -> absl::Status {
        MT_MPI_RETURN_IF_ERROR(MPI_Allreduce(MPI_IN_PLACE, p, n, ToMpi(dtype), ToMpi(op), comm));
        return absl::OkStatus();
      });
    });
  }

  Work AllGather(const void* send, void* recv, int64_t count, core::DType dtype) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(Describe("AllGather", count, dtype), [=]() -> absl::Status {
      MT_RETURN_IF_ERROR(CheckCount(count, "AllGather"));
      MT_MPI_RETURN_IF_ERROR(MPI_Allgather(send, static_cast<int>(count), ToMpi(dtype), recv,
                                           static_cast<int>(count), ToMpi(dtype), comm));
      return absl::OkStatus();
    });
  }

  Work ReduceScatter(const void* send, void* recv, int64_t count, core::DType dtype,
                     ReduceOp op) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(Describe("ReduceScatter", count, dtype), [=]() -> absl::Status {
      MT_RETURN_IF_ERROR(CheckCount(count, "ReduceScatter"));
      MT_MPI_RETURN_IF_ERROR(MPI_Reduce_scatter_block(send, recv, static_cast<int>(count),
                                                      ToMpi(dtype), ToMpi(op), comm));
      return absl::OkStatus();
    });
  }

  Work AllToAllV(const void* send, const std::vector<int64_t>& send_counts,
                 const std::vector<int64_t>& send_displs, void* recv,
                 const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs,
                 core::DType dtype) override {
    MPI_Comm comm = comm_;
    const int n = size_;
    return Executor::Get().Submit(
        Describe("AllToAllV", std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0}),
                 dtype),
        [=]() -> absl::Status {
          for (const auto* v : {&send_counts, &send_displs, &recv_counts, &recv_displs}) {
            if (static_cast<int>(v->size()) != n) {
              return absl::InvalidArgumentError(
                  absl::StrFormat("AllToAllV: %d counts/displacements for %d ranks", v->size(), n));
            }
            for (int64_t x : *v) MT_RETURN_IF_ERROR(CheckCount(x, "AllToAllV"));
          }
          std::vector<int> sc = ToInts(send_counts), sd = ToInts(send_displs),
                           rc = ToInts(recv_counts), rd = ToInts(recv_displs);
          MT_MPI_RETURN_IF_ERROR(MPI_Alltoallv(send, sc.data(), sd.data(), ToMpi(dtype), recv,
                                               rc.data(), rd.data(), ToMpi(dtype), comm));
          return absl::OkStatus();
        });
  }

  Work Broadcast(void* data, int64_t count, core::DType dtype, int root) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(Describe("Broadcast", count, dtype), [=]() {
      return ForEachChunk(data, count, dtype, [&](char* p, int n) -> absl::Status {
        MT_MPI_RETURN_IF_ERROR(MPI_Bcast(p, n, ToMpi(dtype), root, comm));
        return absl::OkStatus();
      });
    });
  }

  Work Send(const void* data, int64_t count, core::DType dtype, int dst, int tag) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(
        Describe("Send", count, dtype) + absl::StrFormat(" to rank %d", dst),
        [=]() -> absl::Status {
          MT_RETURN_IF_ERROR(CheckCount(count, "Send"));
          MT_MPI_RETURN_IF_ERROR(
              MPI_Send(data, static_cast<int>(count), ToMpi(dtype), dst, tag, comm));
          return absl::OkStatus();
        });
  }

  Work Recv(void* data, int64_t count, core::DType dtype, int src, int tag) override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(
        Describe("Recv", count, dtype) + absl::StrFormat(" from rank %d", src),
        [=]() -> absl::Status {
          MT_RETURN_IF_ERROR(CheckCount(count, "Recv"));
          MT_MPI_RETURN_IF_ERROR(MPI_Recv(data, static_cast<int>(count), ToMpi(dtype), src, tag,
                                          comm, MPI_STATUS_IGNORE));
          return absl::OkStatus();
        });
  }

  Work Barrier() override {
    MPI_Comm comm = comm_;
    return Executor::Get().Submit(Describe("Barrier", 0, core::DType::kU8), [=]() -> absl::Status {
      MT_MPI_RETURN_IF_ERROR(MPI_Barrier(comm));
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    MPI_Comm comm = comm_;
    MPI_Comm out = MPI_COMM_NULL;
    MT_RETURN_IF_ERROR(Executor::Get()
                           .Submit(Describe("MPI_Comm_split", 0, core::DType::kU8),
                                   [&]() -> absl::Status {
                                     MT_MPI_RETURN_IF_ERROR(MPI_Comm_split(comm, color, key, &out));
                                     MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
                                     return absl::OkStatus();
                                   })
                           .Wait());
    return std::unique_ptr<Communicator>(new MpiCommunicator(out));
  }

 private:
  std::string Describe(const char* op, int64_t count, core::DType dtype) const {
    return absl::StrFormat("%s of %d %s over %d ranks", op, count, core::DTypeName(dtype), size_);
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator() {
  if (!LaunchedUnderMpi()) return CreateSelfCommunicator();
  Executor& e = Executor::Get();
  MT_RETURN_IF_ERROR(e.Submit("MPI_Init_thread", [&e] { return e.Init(); }).Wait());
  return std::unique_ptr<Communicator>(new MpiCommunicator(MPI_COMM_WORLD));
}

void SetCollectiveTimeout(double seconds) { Executor::Get().SetTimeout(seconds); }

void ShutdownCommunication() {
  Executor& e = Executor::Get();
  if (e.initialized()) e.Shutdown();
}

}  // namespace memtrain::parallel
