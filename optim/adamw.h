// AdamW (PyTorch's, or llm.c's rounding order) over flat blocks; state m and v in fp32.
//
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<optim::AdamW> opt,
//                       optim::AdamW::Create(model, {.lr = 3e-4f, .weight_decay = 0.1f}));
//   opt->Step();
#ifndef MEMTRAIN_OPTIM_ADAMW_H_
#define MEMTRAIN_OPTIM_ADAMW_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

enum class AdamWVariant {
  kPyTorch,  // theta *= 1 - lr*wd, then theta -= lr * m_hat / (sqrt(v_hat) + eps)
  kLlmc,     // theta -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta): llm.c's rounding order
};

struct AdamWConfig {
  float lr = 1e-3f;           // the initial lr() (> 0; set_lr may later take it to 0)
  float beta1 = 0.9f;         // first-moment decay, in [0, 1)
  float beta2 = 0.999f;       // second-moment decay, in [0, 1)
  float eps = 1e-8f;          // denominator epsilon (> 0)
  float weight_decay = 0.0f;  // decoupled weight decay (>= 0), on the views DecayPolicy picks
  AdamWVariant variant = AdamWVariant::kPyTorch;

  // InvalidArgument naming the field ("AdamWConfig::beta1 = 1: must be in [0, 1); ...").
  absl::Status Validate() const;
};

class AdamW : public Optimizer {
 public:
  // Validates the config, then allocates zero-filled m and v (unless kLater).
  static absl::StatusOr<std::unique_ptr<AdamW>> Create(
      core::Model* model, AdamWConfig config, DecayPolicy decay = {},
      StateAllocation state = StateAllocation::kNow);
  const char* name() const override { return "adamw"; }
  const AdamWConfig& config() const { return config_; }
  const core::Tensor& m(int stage) const { return state_[stage][0]; }
  const core::Tensor& v(int stage) const { return state_[stage][1]; }

 private:
  AdamW(core::Model* model, AdamWConfig config, DecayPolicy decay)
      : Optimizer(model, config.lr, std::move(decay)), config_(config) {
    DeclareState({"m", "v"}, core::DType::kF32);
  }
  void UpdateRange(const BlockRange& r, float grad_scale) override;
  AdamWConfig config_;
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_ADAMW_H_
