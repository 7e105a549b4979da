// Lion and Lion-K over flat blocks: one momentum tensor per block (AdamW keeps two), in fp32 or
// bf16 (half the state memory; round to nearest even on every store).
//
//   MT_ASSIGN_OR_RETURN(auto opt, optim::Lion::Create(model, {.lr = 3e-4f, .weight_decay = 1.0f},
//                                                     /*bf16_momentum=*/true));
#ifndef MEMTRAIN_OPTIM_LION_H_
#define MEMTRAIN_OPTIM_LION_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cpu/ops.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

class Lion : public Optimizer {
 public:
  static absl::StatusOr<std::unique_ptr<Lion>> Create(core::Model* model,
                                                      core::cpu::LionHyper hyper,
                                                      bool bf16_momentum = false,
                                                      DecayPolicy decay = {});
  const char* name() const override { return "lion"; }
  void StepBlock(int stage, float lr, float grad_scale) override;
  std::vector<std::pair<std::string, core::Tensor>> State(int stage) const override;

 private:
  Lion(core::Model* model, core::cpu::LionHyper hyper, DecayPolicy decay)
      : Optimizer(model, std::move(decay)), hyper_(hyper) {}
  core::cpu::LionHyper hyper_;
  std::vector<core::Tensor> m_;  // per block, flat, f32 or bf16
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_LION_H_
