// A Communicator for device memory over NCCL. Its collectives run on the communicator's own CUDA
// stream, ordered after the work already enqueued on the compute stream (an event recorded there
// and waited on by the communication stream), so compute and communication overlap; the Work
// they return orders a compute stream after them without blocking the host (WaitOn), or blocks
// the host (Wait). Bootstrapped over any host Communicator: rank 0 creates NCCL's unique id and
// broadcasts it (MPI under mpirun; the self communicator for one process).
//
//   MT_RETURN_IF_ERROR(core::InitCuda(local_rank));
//   MT_ASSIGN_OR_RETURN(auto nccl, parallel::CreateNcclCommunicator(*world, ctx));
//   parallel::Work w = nccl->AllReduce(grads_on_gpu, n, core::DType::kF32, ReduceOp::kSum);
//   MT_RETURN_IF_ERROR(w.WaitOn(ctx));  // the compute stream waits; the host goes on
#ifndef MEMTRAIN_PARALLEL_NCCL_COMMUNICATOR_H_
#define MEMTRAIN_PARALLEL_NCCL_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace memtrain::parallel {

// True when this build has NCCL (the CUDA backend and libnccl were found at configure time).
bool NcclCompiledIn();

// Every rank of `bootstrap` must call it; `compute` is the context (device and stream) whose
// earlier work each collective follows. Unavailable without NCCL or a GPU; the error names the
// cause. One GPU per rank: ranks sharing a GPU are refused by NCCL.
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    Communicator& bootstrap, const core::ExecContext& compute);

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_NCCL_COMMUNICATOR_H_
