#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <future>
#include <memory>

#include "absl/strings/str_format.h"
#include "core/status.h"

namespace memtrain::parallel {
namespace {

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrFormat("NCCL %s failed: %s (%d)", what, ncclGetErrorString(r), static_cast<int>(r)));
}
absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrFormat("CUDA %s failed: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}
#define MT_NCCL_OR_DONE(call) \
  if (absl::Status s_ = NcclStatus((call), #call); !s_.ok()) return Work::Done(s_)
#define MT_CUDA_OR_DONE(call) \
  if (absl::Status s_ = CudaStatus((call), #call); !s_.ok()) return Work::Done(s_)

// NCCL's element type for a reduction; byte copies (gather, broadcast, all-to-all, send) move any
// dtype as bytes.
absl::StatusOr<ncclDataType_t> ReduceType(core::DType t) {
  switch (t) {
    case core::DType::kF32:
      return ncclFloat32;
    case core::DType::kBF16:
      return ncclBfloat16;
    case core::DType::kI32:
      return ncclInt32;
    case core::DType::kF64:
      return ncclFloat64;
    case core::DType::kU8:
      return ncclUint8;
    case core::DType::kU16:
      break;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "NCCL cannot reduce %s elements; reduce f32, bf16, i32, f64 or u8", core::DTypeName(t)));
}

ncclRedOp_t RedOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kSum:
      break;
  }
  return ncclSum;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, const core::ExecContext& compute)
      : comm_(comm), rank_(rank), size_(size), compute_(compute) {}
  ~NcclCommunicator() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (barrier_ != nullptr) cudaFree(barrier_);
    ncclCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    MT_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    return CudaStatus(cudaMalloc(&barrier_, sizeof(float)), "cudaMalloc");
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Work AllReduce(void* data, int64_t count, core::DType dtype, ReduceOp op) override {
    absl::StatusOr<ncclDataType_t> t = ReduceType(dtype);
    if (!t.ok()) return Work::Done(t.status());
    return Enqueue([&] {
      return ncclAllReduce(data, data, static_cast<size_t>(count), *t, RedOp(op), comm_, stream_);
    });
  }
  Work AllGather(const void* send, void* recv, int64_t count, core::DType dtype) override {
    return Enqueue(
        [&] { return ncclAllGather(send, recv, Bytes(count, dtype), ncclUint8, comm_, stream_); });
  }
  Work ReduceScatter(const void* send, void* recv, int64_t count, core::DType dtype,
                     ReduceOp op) override {
    absl::StatusOr<ncclDataType_t> t = ReduceType(dtype);
    if (!t.ok()) return Work::Done(t.status());
    return Enqueue([&] {
      return ncclReduceScatter(send, recv, static_cast<size_t>(count), *t, RedOp(op), comm_,
                               stream_);
    });
  }
  // Grouped sends and receives: one launch moves every rank's chunk.
  Work AllToAllV(const void* send, const std::vector<int64_t>& send_counts,
                 const std::vector<int64_t>& send_displs, void* recv,
                 const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs,
                 core::DType dtype) override {
    if (static_cast<int>(send_counts.size()) != size_ ||
        static_cast<int>(recv_counts.size()) != size_ ||
        static_cast<int>(send_displs.size()) != size_ ||
        static_cast<int>(recv_displs.size()) != size_) {
      return Work::Done(absl::InvalidArgumentError(absl::StrFormat(
          "AllToAllV needs one count and displacement per rank (%d ranks)", size_)));
    }
    const size_t es = core::DTypeSize(dtype);
    return Enqueue([&]() -> ncclResult_t {
      ncclResult_t r = ncclGroupStart();
      for (int p = 0; p < size_ && r == ncclSuccess; ++p) {
        if (send_counts[p] > 0) {
          r = ncclSend(static_cast<const char*>(send) + send_displs[p] * es, send_counts[p] * es,
                       ncclUint8, p, comm_, stream_);
        }
        if (r == ncclSuccess && recv_counts[p] > 0) {
          r = ncclRecv(static_cast<char*>(recv) + recv_displs[p] * es, recv_counts[p] * es,
                       ncclUint8, p, comm_, stream_);
        }
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }
  Work Broadcast(void* data, int64_t count, core::DType dtype, int root) override {
    return Enqueue([&] {
      return ncclBroadcast(data, data, Bytes(count, dtype), ncclUint8, root, comm_, stream_);
    });
  }
  // NCCL orders point-to-point messages per pair of ranks; the tag is not needed.
  Work Send(const void* data, int64_t count, core::DType dtype, int dst, int) override {
    return Enqueue(
        [&] { return ncclSend(data, Bytes(count, dtype), ncclUint8, dst, comm_, stream_); });
  }
  Work Recv(void* data, int64_t count, core::DType dtype, int src, int) override {
    return Enqueue(
        [&] { return ncclRecv(data, Bytes(count, dtype), ncclUint8, src, comm_, stream_); });
  }
  Work Barrier() override {
    Work w = AllReduce(barrier_, 1, core::DType::kF32, ReduceOp::kSum);
    return Work::Done(w.Wait());
  }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key) override {
    if (color < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "Split(color = %d): every rank must join a sub-communicator (color >= 0)", color));
    }
    ncclComm_t sub = nullptr;
    MT_RETURN_IF_ERROR(NcclStatus(ncclCommSplit(comm_, color, key, &sub, nullptr), "CommSplit"));
    int r = 0, n = 0;
    MT_RETURN_IF_ERROR(NcclStatus(ncclCommUserRank(sub, &r), "CommUserRank"));
    MT_RETURN_IF_ERROR(NcclStatus(ncclCommCount(sub, &n), "CommCount"));
    auto c = std::make_unique<NcclCommunicator>(sub, r, n, compute_);
    MT_RETURN_IF_ERROR(c->Init());
    return std::unique_ptr<Communicator>(std::move(c));
  }

 private:
  static size_t Bytes(int64_t count, core::DType t) {
    return static_cast<size_t>(count) * core::DTypeSize(t);
  }

  // The communication stream waits for the compute stream's work so far, runs `op`, and records
  // an event the returned Work waits on (host) or makes another stream wait on (WaitOn).
  template <typename Op>
  Work Enqueue(Op op) {
    cudaEvent_t ready = nullptr, done_raw = nullptr;
    MT_CUDA_OR_DONE(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    MT_CUDA_OR_DONE(cudaEventRecord(ready, static_cast<cudaStream_t>(compute_.stream)));
    MT_CUDA_OR_DONE(cudaStreamWaitEvent(stream_, ready, 0));
    cudaEventDestroy(ready);  // released once recorded work completes
    MT_NCCL_OR_DONE(op());
    MT_CUDA_OR_DONE(cudaEventCreateWithFlags(&done_raw, cudaEventDisableTiming));
    std::shared_ptr<CUevent_st> done(done_raw, [](cudaEvent_t e) { cudaEventDestroy(e); });
    MT_CUDA_OR_DONE(cudaEventRecord(done.get(), stream_));
    ncclComm_t comm = comm_;
    std::shared_future<absl::Status> f =
        std::async(std::launch::deferred, [done, comm]() -> absl::Status {
          MT_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(done.get()), "collective"));
          ncclResult_t async_err = ncclSuccess;
          MT_RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &async_err), "async check"));
          return NcclStatus(async_err, "collective");
        }).share();
    return Work(std::move(f), [done](const core::ExecContext& ctx) {
      return CudaStatus(cudaStreamWaitEvent(static_cast<cudaStream_t>(ctx.stream), done.get(), 0),
                        "cudaStreamWaitEvent");
    });
  }

  ncclComm_t comm_;
  int rank_, size_;
  core::ExecContext compute_;
  cudaStream_t stream_ = nullptr;
  float* barrier_ = nullptr;  // one float on the device for Barrier's all-reduce
};

}  // namespace

bool NcclCompiledIn() { return true; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Communicator& bootstrap, const core::ExecContext& compute) {
  if (compute.device.type != core::DeviceType::kCuda) {
    return absl::InvalidArgumentError(
        "CreateNcclCommunicator: the compute context must be a CUDA device's (call "
        "core::InitCuda first)");
  }
  // Every rank joins the broadcast, also when rank 0 could not make the id (the flag tells the
  // others, so nobody waits for an id that never comes).
  struct {
    int32_t ok = 0;
    ncclUniqueId id;
  } msg;
  absl::Status made;
  if (bootstrap.rank() == 0) {
    made = NcclStatus(ncclGetUniqueId(&msg.id), "GetUniqueId");
    msg.ok = made.ok();
  }
  MT_RETURN_IF_ERROR(bootstrap.Broadcast(&msg, sizeof(msg), core::DType::kU8, 0).Wait());
  if (!msg.ok) {
    return bootstrap.rank() == 0 ? made
                                 : absl::UnavailableError("rank 0 could not create NCCL's id");
  }
  const ncclUniqueId& id = msg.id;
  ncclComm_t comm = nullptr;
  MT_RETURN_IF_ERROR(
      NcclStatus(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()), "CommInitRank"));
  auto c = std::make_unique<NcclCommunicator>(comm, bootstrap.rank(), bootstrap.size(), compute);
  MT_RETURN_IF_ERROR(c->Init());
  return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace memtrain::parallel
