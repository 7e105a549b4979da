// Data parallelism as engine hooks (role kCommunicate): as soon as a stage's backward is done, its
// block's flat gradient is all-reduced (summed) over the group on the communicator's thread while
// the engine goes on with the next stage's backward. Hooks that change gradients (role
// kGradients) run before the reduction; hooks that read them (the default role) run once the
// stage's reduction is done (the engine calls WaitStage). Wait() before the optimizer step.
// Averaging is folded into the loss scale (Engine::Backward(batch, 1 / (ranks * accumulation
// steps))), so no extra pass over the gradients is needed.
//
//   parallel::DataParallelHooks ddp(&grid.data_sequence());
//   engine.AddHooks(&ddp);
//   ddp.set_sync(last_micro_step);       // reduce only on the last micro-batch of a step
//   MT_RETURN_IF_ERROR(engine.Backward(batch, 1.0f / (W * accum)));
//   MT_RETURN_IF_ERROR(ddp.Wait());
#ifndef MEMTRAIN_PARALLEL_DATA_PARALLEL_H_
#define MEMTRAIN_PARALLEL_DATA_PARALLEL_H_

#include <vector>

#include "core/engine.h"
#include "parallel/communicator.h"

namespace memtrain::parallel {

class DataParallelHooks : public core::StageHooks {
 public:
  explicit DataParallelHooks(Communicator* comm) : comm_(comm) {}
  ~DataParallelHooks() override { Wait().IgnoreError(); }

  core::HookRole role() const override { return core::HookRole::kCommunicate; }
  // With sync off, backward only accumulates locally (gradient accumulation micro-steps).
  void set_sync(bool sync) { sync_ = sync; }
  absl::Status AfterBackward(const core::StageEvent& e) override;
  absl::Status WaitStage(int stage) override;
  // Waits for every reduction issued since the last Wait.
  absl::Status Wait();

 private:
  Communicator* comm_;
  bool sync_ = true;
  std::vector<Work> pending_;  // by stage
  // The context backward ran in: WaitStage orders it after a stage's reduction without blocking
  // the host where the communicator can (NCCL on a GPU); on the CPU it is a host wait.
  core::ExecContext ctx_ = core::ExecContext::For(core::Device::Cpu());
};

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_DATA_PARALLEL_H_
