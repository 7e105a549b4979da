// Agreeing on success across ranks, so that no rank waits forever in a collective that a failed
// rank will never join: each rank contributes its local status; if any failed, every rank
// returns an error. The lowest failing rank keeps its own message; the others get the same code
// with an empty message (so the error is printed once).
//
//   MT_RETURN_IF_ERROR(AgreeOnStatus(world, local_status));
//   MT_RETURN_IF_ERROR(AgreeOnJob(world, local_status, &job, options_text));
#ifndef MEMTRAIN_LAUNCHER_AGREE_H_
#define MEMTRAIN_LAUNCHER_AGREE_H_

#include <string>

#include "absl/status/status.h"
#include "launcher/job.pb.h"
#include "parallel/communicator.h"

namespace memtrain::launcher {

absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local);
// The same collective, also agreeing on a stop request: on return `*stop` (this rank's signal
// number, or 0) is the largest over the ranks, so every rank stops after the same step.
absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local, int* stop);

// The first collective of a job: AgreeOnStatus, and then that every rank runs the same build (the
// program's GNU build id), was given the same `options` (a canonical text of the command-line
// options that change what the ranks do together) and resolved the same job (`job`, filled;
// compared by a hash of its text). A rank that differs stops every rank with InvalidArgument;
// rank 0's message names the ranks and the first field that differs ("train.steps = 20 on rank 0
// but 10 on rank 1"). `job` may be null when `local` is an error.
absl::Status AgreeOnJob(parallel::Communicator* comm, const absl::Status& local, const Job* job,
                        const std::string& options);

// The program's GNU build id in hex ("unknown" if it has none).
std::string BuildId();

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_AGREE_H_
