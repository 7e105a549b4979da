// Evaluation: the mean loss of a model over batches of a data loader, run as evaluation
// forwards (hooks see Pass::kEvalForward, so data-parallel or offload policies know no backward
// follows).
//
//   MT_ASSIGN_OR_RETURN(float val, core::EvaluateLoss(engine, val_loader, /*max_batches=*/16));
#ifndef MEMTRAIN_CORE_EVALUATE_H_
#define MEMTRAIN_CORE_EVALUATE_H_

#include "absl/status/statusor.h"
#include "core/data_loader.h"
#include "core/engine.h"

namespace memtrain::core {

// Mean loss over up to `max_batches` batches read from `loader` (from its start). The engine's
// model must be prepared for the loader's (B, T), in any mode.
absl::StatusOr<float> EvaluateLoss(Engine& engine, DataLoader& loader, int max_batches);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_EVALUATE_H_
