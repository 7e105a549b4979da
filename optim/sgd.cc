#include "optim/sgd.h"

namespace memtrain::optim {

absl::StatusOr<std::unique_ptr<Sgd>> Sgd::Create(core::Model* model, core::cpu::SgdHyper hyper,
                                                 DecayPolicy decay) {
  std::unique_ptr<Sgd> opt(new Sgd(model, hyper, std::move(decay)));
  if (hyper.momentum != 0.0f) {
    MT_ASSIGN_OR_RETURN(opt->buf_, opt->ZeroState(core::DType::kF32));
  }
  return opt;
}

void Sgd::StepBlock(int stage, float lr, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  core::cpu::SgdHyper h = hyper_;
  h.lr = lr;
  h.step = step_;
  float* buf = buf_.empty() ? nullptr : buf_[stage].f32();
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    h.weight_decay = decay ? hyper_.weight_decay : 0.0f;
    core::cpu::SgdUpdate(b.params().f32() + off, b.grads().f32() + off, buf ? buf + off : nullptr,
                         n, h, grad_scale);
  });
}

std::vector<std::pair<std::string, core::Tensor>> Sgd::State(int stage) const {
  if (buf_.empty()) return {};
  return {{"momentum_buffer", buf_[stage]}};
}

}  // namespace memtrain::optim
