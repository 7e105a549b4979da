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
                                                 DecayPolicy decay) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Sgd> opt(new Sgd(model, config, std::move(decay)));
  if (config.momentum != 0.0f) {
    MT_ASSIGN_OR_RETURN(opt->buf_, opt->ZeroState(core::DType::kF32));
  }
  return opt;
}

void Sgd::StepBlock(int stage, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  if (!b.grads().defined()) return;  // no backward has reached this block
  core::Backend& backend = core::BackendFor(b.device());
  core::SgdCoeffs c{.lr = lr_,
                    .momentum = config_.momentum,
                    .dampening = config_.dampening,
                    .weight_decay = 0.0f,
                    .nesterov = config_.nesterov,
                    .first_step = step_ == 1};
  float* buf = buf_.empty() ? nullptr : buf_[stage].f32();
  const uint8_t* mask = Mask(stage);
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    c.weight_decay = decay ? config_.weight_decay : 0.0f;
    backend.SgdUpdate(ctx_, b.params().f32() + off, b.grads().f32() + off,
                      buf ? buf + off : nullptr, n, c, grad_scale, mask ? mask + off : nullptr);
  });
}

std::vector<std::pair<std::string, core::Tensor>> Sgd::State(int stage) const {
  if (buf_.empty()) return {};
  return {{"momentum_buffer", buf_[stage]}};
}

}  // namespace memtrain::optim
