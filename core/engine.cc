#include "core/engine.h"

namespace memtrain::core {

absl::StatusOr<float> Engine::Forward(const Batch& batch) {
  MT_RETURN_IF_ERROR(model_->ValidateBatch(batch));
  for (int s = 0; s < model_->num_stages(); ++s) {
    ParamBlock& blk = model_->block(s);
    for (StageHooks* h : hooks_) h->BeforeForward(s, blk);
    model_->ForwardStage(s, batch);
    for (StageHooks* h : hooks_) h->AfterForward(s, blk);
  }
  return batch.targets ? model_->loss() : 0.0f;
}

void Engine::Backward(const Batch& batch, float loss_scale) {
  for (int s = model_->num_stages() - 1; s >= 0; --s) {
    ParamBlock& blk = model_->block(s);
    for (StageHooks* h : hooks_) h->BeforeBackward(s, blk);
    model_->BackwardStage(s, batch, loss_scale);
    for (StageHooks* h : hooks_) h->AfterBackward(s, blk);
  }
}

void Engine::ZeroGrad() {
  for (int s = 0; s < model_->num_stages(); ++s) model_->block(s).ZeroGrad();
}

}  // namespace memtrain::core
