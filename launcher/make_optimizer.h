// The optimizer a job spec's `optimizer` section asks for, and its validation: the spec is turned
// into the optimizer's own config (optim::AdamWConfig, LionConfig, SgdConfig), so a job-spec user
// and an API user meet the same rules and messages (the C++ field names mapped to spec paths).
//
//   MT_RETURN_IF_ERROR(ValidateOptimizerSpec(job.optimizer()));        // in ValidateJob
//   MT_ASSIGN_OR_RETURN(auto opt, MakeOptimizer(job.optimizer(), model));
//   opt->set_lr(schedule.At(step)); opt->Step(scale);                 // lr() starts at PeakLr
#ifndef MEMTRAIN_LAUNCHER_MAKE_OPTIMIZER_H_
#define MEMTRAIN_LAUNCHER_MAKE_OPTIMIZER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "launcher/job.pb.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "optim/zo.h"

namespace memtrain::launcher {

optim::AdamWConfig ToAdamWConfig(const AdamW& spec);
optim::LionConfig ToLionConfig(const Lion& spec);
optim::SgdConfig ToSgdConfig(const Sgd& spec);
optim::ZoConfig ToZoConfig(const Zo& spec);

// The chosen optimizer's config Validate(), with job-spec field names. Expects a filled spec.
absl::Status ValidateOptimizerSpec(const Optimizer& spec);

// Lion, SGD or (the default) AdamW over `model`; errors name job-spec fields.
// kLater: no state yet (offload binds it where it keeps it).
absl::StatusOr<std::unique_ptr<optim::Optimizer>> MakeOptimizer(
    const Optimizer& spec, core::Model* model,
    optim::StateAllocation state = optim::StateAllocation::kNow);

// The bytes of optimizer state (tag kOptimizer) MakeOptimizer allocates for a model of
// `num_parameters`: AdamW m and v in fp32 (8 per parameter), Lion's momentum in fp32 or bf16 (4
// or 2), SGD's momentum buffer in fp32 only when momentum > 0 (4 or 0).
int64_t OptimizerStateBytes(const Optimizer& spec, int64_t num_parameters);

// The peak learning rate of the schedule: the chosen optimizer's lr.
float PeakLr(const Optimizer& spec);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_MAKE_OPTIMIZER_H_
