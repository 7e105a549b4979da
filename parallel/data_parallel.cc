#include "parallel/data_parallel.h"

namespace memtrain::parallel {

void DataParallelHooks::AfterBackward(int stage, core::ParamBlock& block) {
  if (!sync_ || comm_->size() == 1 || block.numel() == 0) return;
  pending_.push_back(
      comm_->AllReduce(block.grads().raw(), block.numel(), core::DType::kF32, ReduceOp::kSum));
}

absl::Status DataParallelHooks::Wait() {
  absl::Status first;
  for (const Work& w : pending_) {
    absl::Status s = w.Wait();
    if (first.ok() && !s.ok()) first = s;
  }
  pending_.clear();
  return first;
}

}  // namespace memtrain::parallel
