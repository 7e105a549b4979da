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
                                                   DecayPolicy decay, StateAllocation state) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Lion> opt(new Lion(model, config, std::move(decay)));
  if (state == StateAllocation::kNow) MT_RETURN_IF_ERROR(opt->AllocateState());
  return opt;
}

void Lion::UpdateRange(const BlockRange& r, float grad_scale) {
  core::Backend& backend = core::BackendFor(r.device);
  const core::ExecContext ctx = ContextFor(r.device);
  core::LionCoeffs c{.lr = lr_,
                     .beta1 = config_.beta1,
                     .beta2 = config_.beta2,
                     .weight_decay = 0.0f,
                     .tanh_direction = config_.direction == LionDirection::kTanh,
                     .tau = config_.tau};
  const uint8_t* mask = Mask(r.stage);
  ForEachDecayRange(r.stage, r.begin, r.begin + r.count, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    const int64_t i = off - r.begin;
    float* p = r.params + i;
    const float* g = r.grads + i;
    const uint8_t* k = mask ? mask + off : nullptr;
    if (state_dtype_ == core::DType::kBF16) {
      backend.LionUpdateBf16(ctx, p, g, static_cast<uint16_t*>(r.state[0]) + i, n, c, grad_scale,
                             k);
    } else {
      backend.LionUpdate(ctx, p, g, static_cast<float*>(r.state[0]) + i, n, c, grad_scale, k);
    }
  });
}

}  // namespace memtrain::optim
