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
                                                     DecayPolicy decay, StateAllocation state) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<AdamW> opt(new AdamW(model, config, std::move(decay)));
  if (state == StateAllocation::kNow) MT_RETURN_IF_ERROR(opt->AllocateState());
  return opt;
}

void AdamW::UpdateRange(const BlockRange& r, float grad_scale) {
  core::Backend& backend = core::BackendFor(r.device);
  const core::ExecContext ctx = ContextFor(r.device);
  const float t = static_cast<float>(step_);  // 1-based after BeginStep
  core::AdamWCoeffs c{.lr = lr_,
                      .beta1 = config_.beta1,
                      .beta2 = config_.beta2,
                      .eps = config_.eps,
                      .weight_decay = 0.0f,
                      .bias_correction1 = 1.0f - std::pow(config_.beta1, t),
                      .bias_correction2 = 1.0f - std::pow(config_.beta2, t),
                      .llmc_order = config_.variant == AdamWVariant::kLlmc};
  const uint8_t* mask = Mask(r.stage);
  float* m = static_cast<float*>(r.state[0]);
  float* v = static_cast<float*>(r.state[1]);
  ForEachDecayRange(r.stage, r.begin, r.begin + r.count, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    const int64_t i = off - r.begin;
    backend.AdamWUpdate(ctx, r.params + i, r.grads + i, m + i, v + i, n, c, grad_scale,
                        mask ? mask + off : nullptr);
  });
}

}  // namespace memtrain::optim
