// The engine runs a model as a list of stages: forward in order, backward in reverse, with hooks
// around every stage. Data parallelism (all-reduce a block's gradient when its backward is done),
// layer-wise offload (fetch a block before its stage runs), zeroth-order training and pruning are
// hook sets over the same loop; the model never knows which are active.
//
//   core::Engine engine(model.get());
//   engine.AddHooks(&ddp_hooks);
//   MT_ASSIGN_OR_RETURN(float loss, engine.Forward(batch));
//   engine.ZeroGrad();
//   engine.Backward(batch);
#ifndef MEMTRAIN_CORE_ENGINE_H_
#define MEMTRAIN_CORE_ENGINE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/param_block.h"

namespace memtrain::core {

// One micro-batch. inputs, targets: (B, T) token ids; targets may be null (forward only, no loss)
// and a negative target marks a position without loss. pos_offset is the global position of
// column 0 (non-zero for a sequence shard).
struct Batch {
  const int32_t* inputs = nullptr;
  const int32_t* targets = nullptr;
  int B = 0;
  int T = 0;
  int pos_offset = 0;
};

// What every trainable model exposes to the engine.
class Model {
 public:
  virtual ~Model() = default;
  virtual int num_stages() const = 0;
  // The parameters stage i owns. Every stage owns exactly one block (possibly empty).
  virtual ParamBlock& block(int stage) = 0;
  // Blocks other than its own that stage i reads (e.g. the tied embedding for the LM head):
  // an offload policy must keep them resident while the stage runs.
  virtual std::vector<int> extra_blocks(int stage) const { return {}; }
  // Allocates activations for micro-batches of (B, T). InvalidArgument if the model cannot serve
  // them, ResourceExhausted past a memory budget.
  virtual absl::Status Prepare(int B, int T) = 0;
  // Checks a batch against the prepared shape and the vocabulary (cheap: O(B*T)).
  virtual absl::Status ValidateBatch(const Batch& batch) const = 0;
  virtual void ForwardStage(int stage, const Batch& batch) = 0;
  // loss_scale multiplies d(mean loss) (e.g. 1/accumulation steps). Gradients accumulate.
  virtual void BackwardStage(int stage, const Batch& batch, float loss_scale) = 0;
  // Mean loss over the positions with a target, of the last forward.
  virtual float loss() const = 0;
};

class StageHooks {
 public:
  virtual ~StageHooks() = default;
  virtual void BeforeForward(int stage, ParamBlock& block) {}
  virtual void AfterForward(int stage, ParamBlock& block) {}
  virtual void BeforeBackward(int stage, ParamBlock& block) {}
  virtual void AfterBackward(int stage, ParamBlock& block) {}
};

class Engine {
 public:
  explicit Engine(Model* model) : model_(model) {}

  // Hooks run in the order added; not owned.
  void AddHooks(StageHooks* hooks) { hooks_.push_back(hooks); }

  // Runs every stage forward; returns the mean loss (0 without targets).
  absl::StatusOr<float> Forward(const Batch& batch);
  // Runs every stage backward, last first, accumulating into the blocks' gradients.
  void Backward(const Batch& batch, float loss_scale = 1.0f);
  void ZeroGrad();

  Model& model() { return *model_; }

 private:
  Model* model_;
  std::vector<StageHooks*> hooks_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_ENGINE_H_
