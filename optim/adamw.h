// AdamW (PyTorch's, or llm.c's rounding order) over flat blocks; state m and v in fp32.
//
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<optim::AdamW> opt, optim::AdamW::Create(model, hyper));
//   opt->Step(lr);
#ifndef MEMTRAIN_OPTIM_ADAMW_H_
#define MEMTRAIN_OPTIM_ADAMW_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cpu/ops.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

class AdamW : public Optimizer {
 public:
  // Allocates zero-filled m and v. hyper.lr and hyper.step are set per step.
  static absl::StatusOr<std::unique_ptr<AdamW>> Create(core::Model* model,
                                                       core::cpu::AdamWHyper hyper,
                                                       DecayPolicy decay = {});
  const char* name() const override { return "adamw"; }
  void StepBlock(int stage, float lr, float grad_scale) override;
  std::vector<std::pair<std::string, core::Tensor>> State(int stage) const override;
  const core::Tensor& m(int stage) const { return m_[stage]; }
  const core::Tensor& v(int stage) const { return v_[stage]; }

 private:
  AdamW(core::Model* model, core::cpu::AdamWHyper hyper, DecayPolicy decay)
      : Optimizer(model, std::move(decay)), hyper_(hyper) {}
  core::cpu::AdamWHyper hyper_;
  std::vector<core::Tensor> m_, v_;  // per block, flat
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_ADAMW_H_
