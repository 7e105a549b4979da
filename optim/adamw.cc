#include "optim/adamw.h"

namespace memtrain::optim {

absl::StatusOr<std::unique_ptr<AdamW>> AdamW::Create(core::Model* model,
                                                     core::cpu::AdamWHyper hyper,
                                                     DecayPolicy decay) {
  std::unique_ptr<AdamW> opt(new AdamW(model, hyper, std::move(decay)));
  MT_ASSIGN_OR_RETURN(opt->m_, opt->ZeroState(core::DType::kF32));
  MT_ASSIGN_OR_RETURN(opt->v_, opt->ZeroState(core::DType::kF32));
  return opt;
}

void AdamW::StepBlock(int stage, float lr, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  core::cpu::AdamWHyper h = hyper_;
  h.lr = lr;
  h.step = step_;
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    h.weight_decay = decay ? hyper_.weight_decay : 0.0f;
    core::cpu::AdamWUpdate(b.params().f32() + off, b.grads().f32() + off, m_[stage].f32() + off,
                           v_[stage].f32() + off, n, h, grad_scale);
  });
}

std::vector<std::pair<std::string, core::Tensor>> AdamW::State(int stage) const {
  return {{"m", m_[stage]}, {"v", v_[stage]}};
}

}  // namespace memtrain::optim
