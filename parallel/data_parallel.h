// Data parallelism as engine hooks: as soon as a stage's backward is done, its block's flat
// gradient is all-reduced (summed) over the data group on the communicator's thread while the
// engine goes on with the next stage's backward. Wait() before the optimizer step. Averaging is
// folded into the loss scale (Engine::Backward(batch, 1 / (data ranks * accumulation steps))),
// so no extra pass over the gradients is needed.
//
//   parallel::DataParallelHooks ddp(&grid.data());
//   engine.AddHooks(&ddp);
//   ddp.set_sync(last_micro_step);       // reduce only on the last micro-batch of a step
//   engine.Backward(batch, 1.0f / (W * accum));
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

  // With sync off, backward only accumulates locally (gradient accumulation micro-steps).
  void set_sync(bool sync) { sync_ = sync; }
  void AfterBackward(int stage, core::ParamBlock& block) override;
  // Waits for every reduction issued since the last Wait.
  absl::Status Wait();

 private:
  Communicator* comm_;
  bool sync_ = true;
  std::vector<Work> pending_;
};

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_DATA_PARALLEL_H_
