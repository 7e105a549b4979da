#include "optim/sgd.h"

#include "core/kernels/cpu/ops.h"
#include "optim/check.h"

namespace memtrain::optim {

absl::Status SgdConfig::Validate() const {
  MT_RETURN_IF_ERROR(internal::Positive("SgdConfig::lr", lr, "e.g. 0.01 to 0.1"));
  MT_RETURN_IF_ERROR(
      internal::UnitInterval("SgdConfig::momentum", momentum, "0 is plain SGD; 0.9 is usual"));
  MT_RETURN_IF_ERROR(internal::UnitInterval("SgdConfig::dampening", dampening,
                                            "0 (the usual value) keeps the full gradient"));
  MT_RETURN_IF_ERROR(
      internal::NonNegative("SgdConfig::weight_decay", weight_decay, "0 turns the L2 penalty off"));
  if (nesterov && (momentum == 0 || dampening != 0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "SgdConfig::nesterov = true: Nesterov momentum needs momentum > 0 and dampening = 0 "
        "(here %s and %s); set momentum (e.g. 0.9) and dampening = 0, or turn nesterov off",
        absl::StrCat(momentum), absl::StrCat(dampening)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Sgd>> Sgd::Create(core::Model* model, SgdConfig config,
                                                 DecayPolicy decay, StateAllocation state) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Sgd> opt(new Sgd(model, config, std::move(decay)));
  if (state == StateAllocation::kNow) MT_RETURN_IF_ERROR(opt->AllocateState());
  return opt;
}

void Sgd::UpdateRange(const BlockRange& r, float grad_scale) {
  core::Backend& backend = core::BackendFor(r.device);
  const core::ExecContext ctx = ContextFor(r.device);
  core::SgdCoeffs c{.lr = lr_,
                    .momentum = config_.momentum,
                    .dampening = config_.dampening,
                    .weight_decay = 0.0f,
                    .nesterov = config_.nesterov,
                    .first_step = step_ == 1};
  float* buf = r.state.empty() ? nullptr : static_cast<float*>(r.state[0]);
  const uint8_t* mask = Mask(r.stage);
  ForEachDecayRange(r.stage, r.begin, r.begin + r.count, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    const int64_t i = off - r.begin;
    backend.SgdUpdate(ctx, r.params + i, r.grads + i, buf ? buf + i : nullptr, n, c, grad_scale,
                      mask ? mask + off : nullptr);
  });
}

}  // namespace memtrain::optim
