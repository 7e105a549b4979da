// Lion and Lion-K over flat blocks: one momentum tensor per block (AdamW keeps two), in fp32 or
// bf16 (half the state memory; round to nearest even on every store).
//
//   MT_ASSIGN_OR_RETURN(auto opt, optim::Lion::Create(model, {.lr = 3e-4f, .weight_decay = 1.0f,
//                                                             .bf16_momentum = true}));
#ifndef MEMTRAIN_OPTIM_LION_H_
#define MEMTRAIN_OPTIM_LION_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

// theta *= 1 - lr*wd; c = beta1*m + (1-beta1)*g; theta -= lr * dK(c); m = beta2*m + (1-beta2)*g.
enum class LionDirection {
  kSign,  // K = L1 norm: dK = sign, sign(0) = 0 (Lion)
  kTanh,  // K = tau * sum log cosh(c / tau): dK = tanh(c / tau), a smooth sign
};

struct LionConfig {
  float lr = 1e-4f;           // the initial lr() (> 0); ~3-10x smaller than AdamW's
  float beta1 = 0.9f;         // interpolation for the update direction, in [0, 1)
  float beta2 = 0.99f;        // momentum decay, in [0, 1)
  float weight_decay = 0.0f;  // decoupled decay lambda (>= 0); with kSign, |theta| <= 1/lambda
  LionDirection direction = LionDirection::kSign;
  float tau = 1e-3f;           // kTanh's scale (> 0); small tau ~ kSign
  bool bf16_momentum = false;  // momentum in bf16: half the state memory

  // InvalidArgument naming the field ("LionConfig::tau = 0: must be > 0 and finite; ...").
  absl::Status Validate() const;
};

class Lion : public Optimizer {
 public:
  // Validates the config, then allocates the zero-filled momentum (unless kLater).
  static absl::StatusOr<std::unique_ptr<Lion>> Create(
      core::Model* model, LionConfig config, DecayPolicy decay = {},
      StateAllocation state = StateAllocation::kNow);
  const char* name() const override { return "lion"; }
  const LionConfig& config() const { return config_; }

 private:
  Lion(core::Model* model, LionConfig config, DecayPolicy decay)
      : Optimizer(model, config.lr, std::move(decay)), config_(config) {
    DeclareState({"m"}, config.bf16_momentum ? core::DType::kBF16 : core::DType::kF32);
  }
  void UpdateRange(const BlockRange& r, float grad_scale) override;
  LionConfig config_;
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_LION_H_
