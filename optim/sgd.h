// SGD with momentum and Nesterov (torch.optim.SGD's semantics) over flat blocks; a momentum
// buffer per block only when momentum > 0.
#ifndef MEMTRAIN_OPTIM_SGD_H_
#define MEMTRAIN_OPTIM_SGD_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernels/cpu/ops.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

class Sgd : public Optimizer {
 public:
  static absl::StatusOr<std::unique_ptr<Sgd>> Create(core::Model* model, core::cpu::SgdHyper hyper,
                                                     DecayPolicy decay = {});
  const char* name() const override { return "sgd"; }
  void StepBlock(int stage, float lr, float grad_scale) override;
  std::vector<std::pair<std::string, core::Tensor>> State(int stage) const override;

 private:
  Sgd(core::Model* model, core::cpu::SgdHyper hyper, DecayPolicy decay)
      : Optimizer(model, std::move(decay)), hyper_(hyper) {}
  core::cpu::SgdHyper hyper_;
  std::vector<core::Tensor> buf_;  // per block, flat; empty without momentum
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_SGD_H_
