// parallel/nccl_communicator.h in a build without NCCL.
#include "parallel/nccl_communicator.h"

namespace memtrain::parallel {

bool NcclCompiledIn() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(Communicator&,
                                                                     const core::ExecContext&) {
  return absl::UnavailableError(
      "this build of memtrain has no NCCL (it needs the CUDA backend and libnccl at configure "
      "time); use the MPI communicator for host memory");
}

}  // namespace memtrain::parallel
