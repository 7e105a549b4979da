#include "parallel/data_parallel.h"

namespace memtrain::parallel {

absl::Status DataParallelHooks::AfterBackward(const core::StageEvent& e) {
  if (!sync_ || comm_->size() == 1 || e.block->numel() == 0) return absl::OkStatus();
  if (pending_.size() <= static_cast<size_t>(e.stage)) pending_.resize(e.stage + 1);
  ctx_ = *e.ctx;
  // The stage's gradient is complete in e.ctx's order; on a device the collective must start
  // after it (a host communicator sees finished CPU work).
  pending_[e.stage] =
      comm_->AllReduce(e.block->grads().raw(), e.block->numel(), core::DType::kF32, ReduceOp::kSum);
  return absl::OkStatus();
}

absl::Status DataParallelHooks::WaitStage(int stage) {
  if (static_cast<size_t>(stage) >= pending_.size()) return absl::OkStatus();
  absl::Status s = pending_[stage].WaitOn(ctx_);
  pending_[stage] = Work();
  return s;
}

absl::Status DataParallelHooks::Wait() {
  absl::Status first;
  for (Work& w : pending_) {
    absl::Status s = w.Wait();
    if (first.ok() && !s.ok()) first = s;
    w = Work();
  }
  return first;
}

}  // namespace memtrain::parallel
