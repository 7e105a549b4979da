#include "core/engine.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"

namespace memtrain::core {

const char* ModelModeName(ModelMode mode) {
  switch (mode) {
    case ModelMode::kTrain:
      return "train";
    case ModelMode::kTrainRecompute:
      return "train-recompute";
    case ModelMode::kEval:
      return "eval";
    case ModelMode::kForwardOnly:
      return "forward-only";
  }
  return "?";
}

int64_t MemoryEstimate::total() const {
  int64_t n = 0;
  for (int64_t b : bytes) {
    n = b > std::numeric_limits<int64_t>::max() - n ? std::numeric_limits<int64_t>::max() : n + b;
  }
  return n;
}

const char* PassName(Pass pass) {
  switch (pass) {
    case Pass::kTrainForward:
      return "train forward";
    case Pass::kBackward:
      return "backward";
    case Pass::kEvalForward:
      return "eval forward";
    case Pass::kLaneForward:
      return "lane forward";
  }
  return "?";
}

absl::StatusOr<int> Model::FindBlock(absl::string_view name) {
  std::string names;
  for (int s = 0; s < num_stages(); ++s) {
    if (block(s).name() == name) return s;
    absl::StrAppend(&names, s ? ", " : "", block(s).name());
  }
  return absl::NotFoundError(
      absl::StrFormat("the model has no block named \"%s\"; its blocks are %s", name, names));
}

void Engine::AddHooks(StageHooks* hooks) {
  hooks_.push_back(hooks);
  std::stable_sort(hooks_.begin(), hooks_.end(), [](StageHooks* a, StageHooks* b) {
    return static_cast<int>(a->role()) < static_cast<int>(b->role());
  });
}

void Engine::RemoveHooks(StageHooks* hooks) {
  hooks_.erase(std::remove(hooks_.begin(), hooks_.end(), hooks), hooks_.end());
}

StageEvent Engine::Event(Pass pass, int stage, int lane) {
  return StageEvent{pass, stage, lane, &model_->block(stage), model_, extra_[stage], &ctx_};
}

absl::Status Engine::Begin(Pass pass, int lanes) {
  extra_.resize(model_->num_stages());
  for (int s = 0; s < model_->num_stages(); ++s) extra_[s] = model_->extra_blocks(s);
  const PassEvent e{pass, model_, lanes, &ctx_};
  for (StageHooks* h : hooks_) MT_RETURN_IF_ERROR(h->BeginPass(e));
  return absl::OkStatus();
}

absl::Status Engine::End(Pass pass, int lanes) {
  const PassEvent e{pass, model_, lanes, &ctx_};
  for (StageHooks* h : hooks_) MT_RETURN_IF_ERROR(h->EndPass(e));
  return absl::OkStatus();
}

// Before a stage: memory hooks come first (they sort first), so the others see resident blocks.
absl::Status Engine::RunBefore(Pass pass, int stage, int lane) {
  const StageEvent e = Event(pass, stage, lane);
  for (StageHooks* h : hooks_) {
    MT_RETURN_IF_ERROR(pass == Pass::kBackward ? h->BeforeBackward(e) : h->BeforeForward(e));
  }
  return absl::OkStatus();
}

// After a forward stage: memory hooks last, so they release a block nobody reads any more.
absl::Status Engine::RunAfterForward(Pass pass, int stage, int lane) {
  const StageEvent e = Event(pass, stage, lane);
  for (StageHooks* h : hooks_) {
    if (h->role() != HookRole::kMemory) MT_RETURN_IF_ERROR(h->AfterForward(e));
  }
  for (auto it = hooks_.rbegin(); it != hooks_.rend(); ++it) {
    if ((*it)->role() == HookRole::kMemory) MT_RETURN_IF_ERROR((*it)->AfterForward(e));
  }
  return absl::OkStatus();
}

absl::Status Engine::Forward(const Batch& batch, Pass pass) {
  if (pass != Pass::kTrainForward && pass != Pass::kEvalForward) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Engine::Forward runs a train or eval forward, not a %s; use "
                        "ForwardLanes for lanes",
                        PassName(pass)));
  }
  const ModelMode mode = model_->prepared().mode;
  if (pass == Pass::kTrainForward && !IsTrainingMode(mode)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "a training forward needs a model prepared for training, but it was prepared %s; "
        "Prepare with ModelMode::kTrain or kTrainRecompute, or run Forward(batch, "
        "Pass::kEvalForward)",
        ModelModeName(mode)));
  }
  MT_RETURN_IF_ERROR(model_->ValidateBatch(batch));
  trained_forward_ = false;
  MT_RETURN_IF_ERROR(Begin(pass, 1));
  for (int s = 0; s < model_->num_stages(); ++s) {
    MT_RETURN_IF_ERROR(RunBefore(pass, s, 0));
    MT_RETURN_IF_ERROR(model_->ForwardStage(s, batch, pass, 0, ctx_));
    MT_RETURN_IF_ERROR(RunAfterForward(pass, s, 0));
  }
  MT_RETURN_IF_ERROR(End(pass, 1));
  trained_forward_ = pass == Pass::kTrainForward;
  return absl::OkStatus();
}

absl::Status Engine::ForwardLanes(absl::Span<const Batch> batches) {
  const PrepareOptions& p = model_->prepared();
  const int lanes = static_cast<int>(batches.size());
  if (p.mode != ModelMode::kForwardOnly || lanes < 1 || lanes > p.lanes) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ForwardLanes with %d lane(s) needs a model prepared kForwardOnly with at least that "
        "many lanes; it was prepared %s with %d lane(s)",
        lanes, ModelModeName(p.mode), p.lanes));
  }
  for (const Batch& b : batches) MT_RETURN_IF_ERROR(model_->ValidateBatch(b));
  trained_forward_ = false;
  MT_RETURN_IF_ERROR(Begin(Pass::kLaneForward, lanes));
  for (int s = 0; s < model_->num_stages(); ++s) {
    for (int lane = 0; lane < lanes; ++lane) {
      MT_RETURN_IF_ERROR(RunBefore(Pass::kLaneForward, s, lane));
      MT_RETURN_IF_ERROR(model_->ForwardStage(s, batches[lane], Pass::kLaneForward, lane, ctx_));
      MT_RETURN_IF_ERROR(RunAfterForward(Pass::kLaneForward, s, lane));
    }
  }
  return End(Pass::kLaneForward, lanes);
}

absl::Status Engine::RunReduced(int stage) {
  for (StageHooks* h : hooks_) {
    if (h->role() == HookRole::kCommunicate) MT_RETURN_IF_ERROR(h->WaitStage(stage));
  }
  const StageEvent e = Event(Pass::kBackward, stage, 0);
  for (StageHooks* h : hooks_) {
    if (h->role() == HookRole::kReducedGradients || h->role() == HookRole::kObserve) {
      MT_RETURN_IF_ERROR(h->AfterBackward(e));
    }
  }
  for (auto it = hooks_.rbegin(); it != hooks_.rend(); ++it) {
    if ((*it)->role() == HookRole::kMemory) MT_RETURN_IF_ERROR((*it)->AfterBackward(e));
  }
  return absl::OkStatus();
}

absl::Status Engine::Backward(const Batch& batch, float loss_scale) {
  if (!trained_forward_) {
    return absl::FailedPreconditionError(
        "Backward needs the training forward of the same batch just before it (Forward with "
        "Pass::kTrainForward on a model prepared for training)");
  }
  trained_forward_ = false;
  for (int s = 0; s < model_->num_stages(); ++s) {
    MT_RETURN_IF_ERROR(model_->block(s).EnsureGrads());
  }
  MT_RETURN_IF_ERROR(Begin(Pass::kBackward, 1));
  const bool deferred = std::any_of(hooks_.begin(), hooks_.end(), [](StageHooks* h) {
    return h->role() != HookRole::kGradients && h->role() != HookRole::kCommunicate;
  });
  int waiting = -1;  // a stage whose reduced-gradient hooks have not run yet
  for (int s = model_->num_stages() - 1; s >= 0; --s) {
    MT_RETURN_IF_ERROR(RunBefore(Pass::kBackward, s, 0));
    MT_RETURN_IF_ERROR(model_->BackwardStage(s, batch, loss_scale, ctx_));
    const StageEvent e = Event(Pass::kBackward, s, 0);
    for (StageHooks* h : hooks_) {
      if (h->role() == HookRole::kGradients || h->role() == HookRole::kCommunicate) {
        MT_RETURN_IF_ERROR(h->AfterBackward(e));
      }
    }
    // Lag by one stage: stage s's collectives run while stage s-1 computes.
    if (waiting >= 0) MT_RETURN_IF_ERROR(RunReduced(waiting));
    waiting = deferred ? s : -1;
  }
  if (waiting >= 0) MT_RETURN_IF_ERROR(RunReduced(waiting));
  return End(Pass::kBackward, 1);
}

void Engine::ZeroGrad() {
  for (int s = 0; s < model_->num_stages(); ++s) model_->block(s).ZeroGrad();
  for (StageHooks* h : hooks_) h->OnZeroGrad();
}

void Engine::ReleaseGrads() {
  for (int s = 0; s < model_->num_stages(); ++s) model_->block(s).ReleaseGrads();
}

}  // namespace memtrain::core
