// The engine runs a model as a list of stages: forward in order, backward in reverse, and, for
// forward-only lanes, every lane through a stage before the next stage. Hooks see one event per
// stage and pass and return a status; the engine stops at the first error and returns it.
// Data parallelism, offload, zeroth-order perturbation and pruning are hook sets over this loop;
// the model never knows which are active.
//
// Hook order is safe by construction. Each hook declares its role and the engine orders them,
// whatever order they were added in (ties keep the order of AddHooks):
//   kMemory            brings block storage in before anyone else sees the stage, and takes it
//                      away after everyone (offload). Memory hooks nest: Before* in the order
//                      they were added, After* in reverse (an offload window binds a block to
//                      a device slot, a perturbation hook added after it binds it on top);
//   kGradients         changes a block's gradients right after its backward (clipping per block,
//                      masking): runs before any communication reads them;
//   kCommunicate       starts collectives on the gradients (data parallel) and says, through
//                      WaitStage, when a stage's are done;
//   kReducedGradients  (the default) sees the gradients of a stage only once every kCommunicate
//                      hook has finished with them. The engine waits for stage s while the
//                      backward of stage s-1 has been issued, so communication still overlaps;
//   kObserve           reads only (logging), after the above.
//
//   core::Engine engine(model.get());
//   engine.AddHooks(&ddp_hooks);
//   MT_RETURN_IF_ERROR(engine.Forward(batch));
//   float loss = engine.Loss();            // read when asked
//   engine.ZeroGrad();
//   MT_RETURN_IF_ERROR(engine.Backward(batch));
#ifndef MEMTRAIN_CORE_ENGINE_H_
#define MEMTRAIN_CORE_ENGINE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/backend.h"
#include "core/model.h"
#include "core/param_block.h"

namespace memtrain::core {

// What a hook sees around one stage of one pass.
struct StageEvent {
  Pass pass;
  int stage;
  int lane;           // the lane of a kLaneForward pass, else 0
  ParamBlock* block;  // the stage's own block
  Model* model;
  absl::Span<const int> extra;  // blocks the stage also reads (the tied embedding for the head)
  const ExecContext* ctx;       // where the stage's ops run
};

// Begin and end of a pass.
struct PassEvent {
  Pass pass;
  Model* model;
  int lanes;  // 1 unless kLaneForward
  const ExecContext* ctx;
};

enum class HookRole : uint8_t {
  kMemory,
  kGradients,
  kCommunicate,
  kReducedGradients,
  kObserve,
};

class StageHooks {
 public:
  virtual ~StageHooks() = default;
  virtual HookRole role() const { return HookRole::kReducedGradients; }

  virtual absl::Status BeginPass(const PassEvent& e) { return absl::OkStatus(); }
  virtual absl::Status EndPass(const PassEvent& e) { return absl::OkStatus(); }
  // Forward hooks fire for every forward pass (train, eval and lanes); the event says which.
  virtual absl::Status BeforeForward(const StageEvent& e) { return absl::OkStatus(); }
  virtual absl::Status AfterForward(const StageEvent& e) { return absl::OkStatus(); }
  virtual absl::Status BeforeBackward(const StageEvent& e) { return absl::OkStatus(); }
  virtual absl::Status AfterBackward(const StageEvent& e) { return absl::OkStatus(); }
  // kCommunicate hooks: blocks until what AfterBackward started for `stage` is done.
  virtual absl::Status WaitStage(int stage) { return absl::OkStatus(); }
  // The engine's ZeroGrad: a hook that keeps gradients away from the blocks (offload) clears its
  // own.
  virtual void OnZeroGrad() {}
};

class Engine {
 public:
  explicit Engine(Model* model) : Engine(model, ExecContext::For(model->block(0).device())) {}
  Engine(Model* model, ExecContext ctx) : model_(model), ctx_(ctx) {}

  // Not owned. Ordered by role (see above), then by the order of adding.
  void AddHooks(StageHooks* hooks);
  void RemoveHooks(StageHooks* hooks);

  // Runs every stage forward (pass kTrainForward or kEvalForward). A training forward needs a
  // model prepared in a training mode.
  absl::Status Forward(const Batch& batch, Pass pass = Pass::kTrainForward);
  // Forward-only lanes (model prepared kForwardOnly with at least batches.size() lanes): every
  // lane runs stage s before any lane runs stage s+1.
  absl::Status ForwardLanes(absl::Span<const Batch> batches);
  // Runs every stage backward, last first, accumulating into the blocks' gradients (allocated
  // here the first time). Needs the training forward of the same batch just before.
  absl::Status Backward(const Batch& batch, float loss_scale = 1.0f);
  void ZeroGrad();
  // Frees every block's gradients (e.g. before switching to forward-only work).
  void ReleaseGrads();

  // The mean loss of the last forward of `lane` (0 without targets).
  float Loss(int lane = 0) const { return static_cast<float>(model_->Loss(lane)); }

  Model& model() { return *model_; }
  const ExecContext& context() const { return ctx_; }

 private:
  StageEvent Event(Pass pass, int stage, int lane);
  absl::Status RunBefore(Pass pass, int stage, int lane);
  absl::Status RunAfterForward(Pass pass, int stage, int lane);
  // After-backward hooks of the roles that need reduced gradients, for `stage`.
  absl::Status RunReduced(int stage);
  absl::Status Begin(Pass pass, int lanes);
  absl::Status End(Pass pass, int lanes);

  Model* model_;
  ExecContext ctx_;
  std::vector<StageHooks*> hooks_;  // sorted by role, stable
  std::vector<std::vector<int>> extra_;
  bool trained_forward_ = false;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_ENGINE_H_
