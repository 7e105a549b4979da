// Agreeing on success across ranks, so that no rank waits forever in a collective that a failed
// rank will never join: each rank contributes its local status; if any failed, every rank
// returns an error. The lowest failing rank keeps its own message; the others get the same code
// with an empty message (so the error is printed once).
//
//   MT_RETURN_IF_ERROR(AgreeOnStatus(world, local_status));
#ifndef MEMTRAIN_LAUNCHER_AGREE_H_
#define MEMTRAIN_LAUNCHER_AGREE_H_

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace memtrain::launcher {

absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_AGREE_H_
