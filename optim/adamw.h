// AdamW over a model's flat blocks: one fused pass per block over (params, grads, m, v), so it can
// run block by block (and, with offload, on the host for a block that is not resident).
//
//   MT_ASSIGN_OR_RETURN(optim::AdamW opt, optim::AdamW::Create(model.get(), hyper));
//   opt.Step(lr);            // all blocks, step count advanced once
#ifndef MEMTRAIN_OPTIM_ADAMW_H_
#define MEMTRAIN_OPTIM_ADAMW_H_

#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::optim {

class AdamW {
 public:
  // Allocates and zero-fills m and v (tag kOptimizer) for every block, touching them once up
  // front so the first step does not pay for page faults.
  static absl::StatusOr<AdamW> Create(core::Model* model, core::cpu::AdamWHyper hyper);

  // One step over every block with learning rate `lr`.
  void Step(float lr);
  // Updates one block with the current step count; Step() = BeginStep + StepBlock for all blocks.
  void BeginStep() { ++step_; }
  void StepBlock(int stage, float lr);

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  // Flat first and second moments of stage `s` (checkpointing).
  const core::Tensor& m(int s) const { return m_[s]; }
  const core::Tensor& v(int s) const { return v_[s]; }
  int64_t state_bytes() const;
  const core::cpu::AdamWHyper& hyper() const { return hyper_; }

 private:
  core::Model* model_ = nullptr;
  core::cpu::AdamWHyper hyper_;
  int64_t step_ = 0;
  std::vector<core::Tensor> m_, v_;  // per block, flat
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_ADAMW_H_
