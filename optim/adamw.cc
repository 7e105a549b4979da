#include "optim/adamw.h"

#include <cmath>

#include "core/kernels/cpu/ops.h"
#include "optim/check.h"

namespace memtrain::optim {

absl::Status AdamWConfig::Validate() const {
  MT_RETURN_IF_ERROR(
      internal::Positive("AdamWConfig::lr", lr, "AdamW usually trains with 1e-4 to 1e-3"));
  MT_RETURN_IF_ERROR(internal::UnitInterval("AdamWConfig::beta1", beta1, "the usual value is 0.9"));
  MT_RETURN_IF_ERROR(
      internal::UnitInterval("AdamWConfig::beta2", beta2, "the usual values are 0.95 to 0.999"));
  MT_RETURN_IF_ERROR(internal::Positive("AdamWConfig::eps", eps, "the usual value is 1e-8"));
  MT_RETURN_IF_ERROR(internal::NonNegative("AdamWConfig::weight_decay", weight_decay,
                                           "0 turns weight decay off; 0.1 is usual"));
  if (variant != AdamWVariant::kPyTorch && variant != AdamWVariant::kLlmc) {
    return absl::InvalidArgumentError(
        absl::StrFormat("AdamWConfig::variant = %d: unknown; use AdamWVariant::kPyTorch or kLlmc",
                        static_cast<int>(variant)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<AdamW>> AdamW::Create(core::Model* model, AdamWConfig config,
                                                     DecayPolicy decay) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<AdamW> opt(new AdamW(model, config, std::move(decay)));
  MT_ASSIGN_OR_RETURN(opt->m_, opt->ZeroState(core::DType::kF32));
  MT_ASSIGN_OR_RETURN(opt->v_, opt->ZeroState(core::DType::kF32));
  return opt;
}

void AdamW::StepBlock(int stage, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  if (!b.grads().defined()) return;  // no backward has reached this block
  core::Backend& backend = core::BackendFor(b.device());
  const float t = static_cast<float>(step_);  // 1-based after BeginStep
  core::AdamWCoeffs c{.lr = lr_,
                      .beta1 = config_.beta1,
                      .beta2 = config_.beta2,
                      .eps = config_.eps,
                      .weight_decay = 0.0f,
                      .bias_correction1 = 1.0f - std::pow(config_.beta1, t),
                      .bias_correction2 = 1.0f - std::pow(config_.beta2, t),
                      .llmc_order = config_.variant == AdamWVariant::kLlmc};
  const uint8_t* mask = Mask(stage);
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    backend.AdamWUpdate(ctx_, b.params().f32() + off, b.grads().f32() + off, m_[stage].f32() + off,
                        v_[stage].f32() + off, n, c, grad_scale, mask ? mask + off : nullptr);
  });
}

std::vector<std::pair<std::string, core::Tensor>> AdamW::State(int stage) const {
  return {{"m", m_[stage]}, {"v", v_[stage]}};
}

}  // namespace memtrain::optim
