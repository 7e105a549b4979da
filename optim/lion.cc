#include "optim/lion.h"

#include "core/kernels/cpu/ops.h"
#include "optim/check.h"

namespace memtrain::optim {

absl::Status LionConfig::Validate() const {
  MT_RETURN_IF_ERROR(internal::Positive(
      "LionConfig::lr", lr, "Lion usually trains with 3-10x less than AdamW, e.g. 1e-4"));
  MT_RETURN_IF_ERROR(internal::UnitInterval("LionConfig::beta1", beta1, "the usual value is 0.9"));
  MT_RETURN_IF_ERROR(
      internal::UnitInterval("LionConfig::beta2", beta2, "the usual values are 0.98 to 0.99"));
  MT_RETURN_IF_ERROR(
      internal::NonNegative("LionConfig::weight_decay", weight_decay,
                            "0 turns weight decay off; Lion usually takes 3-10x more than AdamW"));
  if (direction != LionDirection::kSign && direction != LionDirection::kTanh) {
    return absl::InvalidArgumentError(
        absl::StrFormat("LionConfig::direction = %d: unknown; use LionDirection::kSign or kTanh",
                        static_cast<int>(direction)));
  }
  MT_RETURN_IF_ERROR(internal::Positive("LionConfig::tau", tau,
                                        "the scale of tanh(c / tau); 1e-3 is close to sign"));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Lion>> Lion::Create(core::Model* model, LionConfig config,
                                                   DecayPolicy decay) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Lion> opt(new Lion(model, config, std::move(decay)));
  MT_ASSIGN_OR_RETURN(
      opt->m_, opt->ZeroState(config.bf16_momentum ? core::DType::kBF16 : core::DType::kF32));
  return opt;
}

void Lion::StepBlock(int stage, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  if (!b.grads().defined()) return;  // no backward has reached this block
  core::Backend& backend = core::BackendFor(b.device());
  core::LionCoeffs c{.lr = lr_,
                     .beta1 = config_.beta1,
                     .beta2 = config_.beta2,
                     .weight_decay = 0.0f,
                     .tanh_direction = config_.direction == LionDirection::kTanh,
                     .tau = config_.tau};
  const core::Tensor& m = m_[stage];
  const uint8_t* mask = Mask(stage);
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    float* p = b.params().f32() + off;
    const float* g = b.grads().f32() + off;
    const uint8_t* k = mask ? mask + off : nullptr;
    if (m.dtype() == core::DType::kBF16) {
      backend.LionUpdateBf16(ctx_, p, g, m.u16() + off, n, c, grad_scale, k);
    } else {
      backend.LionUpdate(ctx_, p, g, m.f32() + off, n, c, grad_scale, k);
    }
  });
}

std::vector<std::pair<std::string, core::Tensor>> Lion::State(int stage) const {
  return {{"m", m_[stage]}};
}

}  // namespace memtrain::optim
