#include "launcher/agree.h"

#include <vector>

namespace memtrain::launcher {

absl::Status AgreeOnStatus(parallel::Communicator* comm, const absl::Status& local) {
  const int32_t mine = static_cast<int32_t>(local.code());
  std::vector<int32_t> all(comm->size());
  absl::Status s = comm->AllGather(&mine, all.data(), 1, core::DType::kI32).Wait();
  if (!s.ok()) return local.ok() ? s : local;
  for (int r = 0; r < comm->size(); ++r) {
    if (all[r] == 0) continue;
    if (r == comm->rank()) return local;
    return absl::Status(static_cast<absl::StatusCode>(all[r]), "");
  }
  return absl::OkStatus();
}

}  // namespace memtrain::launcher
