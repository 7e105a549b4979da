#include "optim/lion.h"

namespace memtrain::optim {

absl::StatusOr<std::unique_ptr<Lion>> Lion::Create(core::Model* model, core::cpu::LionHyper hyper,
                                                   bool bf16_momentum, DecayPolicy decay) {
  std::unique_ptr<Lion> opt(new Lion(model, hyper, std::move(decay)));
  MT_ASSIGN_OR_RETURN(opt->m_,
                      opt->ZeroState(bf16_momentum ? core::DType::kBF16 : core::DType::kF32));
  return opt;
}

void Lion::StepBlock(int stage, float lr, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  core::cpu::LionHyper h = hyper_;
  h.lr = lr;
  const core::Tensor& m = m_[stage];
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    h.weight_decay = decay ? hyper_.weight_decay : 0.0f;
    float* p = b.params().f32() + off;
    const float* g = b.grads().f32() + off;
    if (m.dtype() == core::DType::kBF16) {
      core::cpu::LionUpdateBf16(p, g, m.u16() + off, n, h, grad_scale);
    } else {
      core::cpu::LionUpdate(p, g, m.f32() + off, n, h, grad_scale);
    }
  });
}

std::vector<std::pair<std::string, core::Tensor>> Lion::State(int stage) const {
  return {{"m", m_[stage]}};
}

}  // namespace memtrain::optim
