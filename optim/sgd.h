// SGD with momentum and Nesterov (torch.optim.SGD's semantics) over flat blocks; a momentum
// buffer per block only when momentum > 0.
//
//   MT_ASSIGN_OR_RETURN(auto opt, optim::Sgd::Create(model, {.lr = 0.1f, .momentum = 0.9f}));
#ifndef MEMTRAIN_OPTIM_SGD_H_
#define MEMTRAIN_OPTIM_SGD_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

// g += wd*theta; buf = g on the first step, else momentum*buf + (1-dampening)*g;
// g = nesterov ? g + momentum*buf : buf; theta -= lr*g.
struct SgdConfig {
  float lr = 1e-2f;           // the initial lr() (> 0)
  float momentum = 0.0f;      // in [0, 1); 0 = plain SGD, no state
  float dampening = 0.0f;     // in [0, 1); must be 0 with nesterov
  float weight_decay = 0.0f;  // L2 penalty added to the gradient (>= 0)
  bool nesterov = false;      // Nesterov momentum (needs momentum > 0, dampening = 0)

  // InvalidArgument naming the field ("SgdConfig::momentum = 1: must be in [0, 1); ...").
  absl::Status Validate() const;
};

class Sgd : public Optimizer {
 public:
  // Validates the config, then allocates the zero-filled momentum buffer (if momentum > 0;
  // unless kLater).
  static absl::StatusOr<std::unique_ptr<Sgd>> Create(core::Model* model, SgdConfig config,
                                                     DecayPolicy decay = {},
                                                     StateAllocation state = StateAllocation::kNow);
  const char* name() const override { return "sgd"; }
  const SgdConfig& config() const { return config_; }

 private:
  Sgd(core::Model* model, SgdConfig config, DecayPolicy decay)
      : Optimizer(model, config.lr, std::move(decay)), config_(config) {
    if (config.momentum != 0.0f)
      DeclareState({"momentum_buffer"}, core::DType::kF32);
    else
      DeclareState({}, core::DType::kF32);
  }
  void UpdateRange(const BlockRange& r, float grad_scale) override;
  SgdConfig config_;
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_SGD_H_
