#include "parallel/communicator.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"

namespace memtrain::parallel {
namespace {

class SelfCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Work AllReduce(void*, int64_t, core::DType, ReduceOp) override { return Work::Done(); }
  Work AllGather(const void* send, void* recv, int64_t count, core::DType dtype) override {
    Copy(recv, send, count, dtype);
    return Work::Done();
  }
  Work ReduceScatter(const void* send, void* recv, int64_t count, core::DType dtype,
                     ReduceOp) override {
    Copy(recv, send, count, dtype);
    return Work::Done();
  }
  Work AllToAllV(const void* send, const std::vector<int64_t>& send_counts,
                 const std::vector<int64_t>& send_displs, void* recv,
                 const std::vector<int64_t>& recv_counts, const std::vector<int64_t>& recv_displs,
                 core::DType dtype) override {
    if (send_counts[0] != recv_counts[0]) {
      return Work::Done(absl::InvalidArgumentError("AllToAllV: send and receive counts differ"));
    }
    const size_t es = core::DTypeSize(dtype);
    Copy(static_cast<char*>(recv) + recv_displs[0] * es,
         static_cast<const char*>(send) + send_displs[0] * es, send_counts[0], dtype);
    return Work::Done();
  }
  Work Broadcast(void*, int64_t, core::DType, int) override { return Work::Done(); }
  Work Send(const void*, int64_t, core::DType, int, int) override {
    return Work::Done(absl::UnimplementedError("Send on a single-process communicator"));
  }
  Work Recv(void*, int64_t, core::DType, int, int) override {
    return Work::Done(absl::UnimplementedError("Recv on a single-process communicator"));
  }
  Work Barrier() override { return Work::Done(); }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int, int) override {
    return CreateSelfCommunicator();
  }

 private:
  static void Copy(void* dst, const void* src, int64_t count, core::DType dtype) {
    if (dst != src) std::memmove(dst, src, count * core::DTypeSize(dtype));
  }
};

}  // namespace

Work Work::Done(absl::Status s) {
  std::promise<absl::Status> p;
  p.set_value(std::move(s));
  return Work(p.get_future().share());
}

std::unique_ptr<Communicator> CreateSelfCommunicator() {
  return std::make_unique<SelfCommunicator>();
}

bool LaunchedUnderMpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

}  // namespace memtrain::parallel
