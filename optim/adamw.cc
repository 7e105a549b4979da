#include "optim/adamw.h"

namespace memtrain::optim {

absl::StatusOr<AdamW> AdamW::Create(core::Model* model, core::cpu::AdamWHyper hyper) {
  AdamW opt;
  opt.model_ = model;
  opt.hyper_ = hyper;
  for (int s = 0; s < model->num_stages(); ++s) {
    const core::ParamBlock& b = model->block(s);
    MT_ASSIGN_OR_RETURN(core::Tensor m,
                        core::Tensor::Zeros({b.numel()}, core::DType::kF32,
                                            core::MemoryTag::kOptimizer, b.device()));
    MT_ASSIGN_OR_RETURN(core::Tensor v,
                        core::Tensor::Zeros({b.numel()}, core::DType::kF32,
                                            core::MemoryTag::kOptimizer, b.device()));
    opt.m_.push_back(std::move(m));
    opt.v_.push_back(std::move(v));
  }
  return opt;
}

void AdamW::StepBlock(int stage, float lr) {
  const core::ParamBlock& b = model_->block(stage);
  core::cpu::AdamWHyper h = hyper_;
  h.lr = lr;
  h.step = step_;
  core::cpu::AdamWUpdate(b.params().f32(), b.grads().f32(), m_[stage].f32(), v_[stage].f32(),
                         b.numel(), h);
}

void AdamW::Step(float lr) {
  BeginStep();
  for (int s = 0; s < model_->num_stages(); ++s) StepBlock(s, lr);
}

int64_t AdamW::state_bytes() const {
  int64_t n = 0;
  for (size_t i = 0; i < m_.size(); ++i) n += m_[i].nbytes() + v_[i].nbytes();
  return n;
}

}  // namespace memtrain::optim
