// Collective communication behind one small interface (after PyTorch's c10d ProcessGroup): every
// operation is asynchronous and returns a handle to Wait() on. Implementations: MPI for host
// memory (parallel/mpi_communicator.cc), a single-process one, and (with the CUDA backend) NCCL
// for device memory. All ranks of a communicator must issue the same operations in the same order.
//
//   std::unique_ptr<Communicator> world = parallel::CreateWorldCommunicator().value();
//   parallel::Work w = world->AllReduce(grads, n, core::DType::kF32, ReduceOp::kSum);
//   ... overlap compute ...
//   MT_RETURN_IF_ERROR(w.Wait());
#ifndef MEMTRAIN_PARALLEL_COMMUNICATOR_H_
#define MEMTRAIN_PARALLEL_COMMUNICATOR_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/dtype.h"

namespace memtrain::parallel {

enum class ReduceOp { kSum, kMax, kMin };

// A handle on an operation in flight (after PyTorch c10d's Work). Wait() blocks the host until
// it is done and returns its status; WaitOn(ctx) orders the work of `ctx` after it without
// blocking the host where the backend can (a device stream waits on an event); on the CPU, and
// for host-memory communicators, it is Wait(). An empty handle is already done.
class Work {
 public:
  // How a device communicator makes a stream wait (e.g. cudaStreamWaitEvent on the event
  // recorded after the collective). Returns the status of the enqueue.
  using StreamWait = std::function<absl::Status(const core::ExecContext&)>;

  Work() = default;
  explicit Work(std::shared_future<absl::Status> f, StreamWait stream_wait = nullptr)
      : done_(std::move(f)), stream_wait_(std::move(stream_wait)) {}
  static Work Done(absl::Status s = absl::OkStatus());
  absl::Status Wait() const { return done_.valid() ? done_.get() : absl::OkStatus(); }
  absl::Status WaitOn(const core::ExecContext& ctx) const {
    if (stream_wait_ && ctx.device.type != core::DeviceType::kCpu) return stream_wait_(ctx);
    return Wait();
  }

 private:
  std::shared_future<absl::Status> done_;
  StreamWait stream_wait_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: data (count elements of dtype) becomes the reduction over ranks.
  virtual Work AllReduce(void* data, int64_t count, core::DType dtype, ReduceOp op) = 0;
  // recv (size() * count) = every rank's send (count), in rank order.
  virtual Work AllGather(const void* send, void* recv, int64_t count, core::DType dtype) = 0;
  // send (size() * count); recv (count) = the sum over ranks of chunk rank() of their send.
  virtual Work ReduceScatter(const void* send, void* recv, int64_t count, core::DType dtype,
                             ReduceOp op) = 0;
  // Counts and displacements in elements, one per rank.
  virtual Work AllToAllV(const void* send, const std::vector<int64_t>& send_counts,
                         const std::vector<int64_t>& send_displs, void* recv,
                         const std::vector<int64_t>& recv_counts,
                         const std::vector<int64_t>& recv_displs, core::DType dtype) = 0;
  virtual Work Broadcast(void* data, int64_t count, core::DType dtype, int root) = 0;
  virtual Work Send(const void* data, int64_t count, core::DType dtype, int dst, int tag) = 0;
  virtual Work Recv(void* data, int64_t count, core::DType dtype, int src, int tag) = 0;
  virtual Work Barrier() = 0;

  // A sub-communicator of the ranks that pass the same color, ordered by key (as MPI_Comm_split).
  // Every rank of this communicator must call it.
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) = 0;
};

// One process: collectives are copies. Used for `trainer job.pbtxt` without mpirun.
std::unique_ptr<Communicator> CreateSelfCommunicator();

// MPI's world when the process was started by an MPI launcher (mpirun sets OMPI_COMM_WORLD_SIZE,
// PMI_SIZE or PMIX_RANK), else a self communicator. Initialises MPI once per process.
absl::StatusOr<std::unique_ptr<Communicator>> CreateWorldCommunicator();
// True when built with MPI and the launcher's environment is present.
bool LaunchedUnderMpi();
// The watchdog of MPI operations: one that runs longer than `seconds` prints what it waited for
// and ends this process with exit code 3, which makes mpirun stop every rank (a stopped, hung or
// dead rank no longer hangs the job). 0 turns it off (the default).
void SetCollectiveTimeout(double seconds);
// Finalises MPI if it was initialised. Call it once at the end of a successful run, after all
// communicators are gone: under mpirun, a rank that exits without it counts as failed and the
// other ranks are killed, possibly before their last output is written. An error exit on one
// rank should skip it (MPI_Finalize waits for every rank; mpirun's stop does not).
void ShutdownCommunication();

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_COMMUNICATOR_H_
