// The API validates C++ structs and names their fields ("AdamWConfig::lr = -1: must be >= 0 ...");
// a job spec user knows the same setting as "optimizer.adamw.lr". ToJobSpecNames rewrites every
// known C++ field name in a Status message to its job-spec path, so both see one rule and one
// message:
//
//   MT_RETURN_IF_ERROR(ToJobSpecNames(ToAdamWConfig(spec.adamw()).Validate()));
//
// Known: every field of optim::AdamWConfig (optimizer.adamw.*), optim::LionConfig
// (optimizer.lion.*; direction -> k, bf16_momentum -> momentum_dtype), optim::SgdConfig
// (optimizer.sgd.*), core::GPT2Config (model.gpt.*), offload::StreamerOptions (offload.*),
// core::CnnConfig (model.cnn.*) and federated::PruneOptions (federated.pruning.*). Names may be
// namespace-qualified
// ("optim::AdamWConfig::lr"); unknown names are left as they are. The code and payloads are kept.
#ifndef MEMTRAIN_LAUNCHER_FIELD_NAMES_H_
#define MEMTRAIN_LAUNCHER_FIELD_NAMES_H_

#include "absl/status/status.h"

namespace memtrain::launcher {

absl::Status ToJobSpecNames(absl::Status status);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_FIELD_NAMES_H_
