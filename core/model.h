// What every trainable model exposes to the engine: a short list of stages, each owning one flat
// ParamBlock, prepared for a batch shape in one of four modes, run stage by stage.
//
//   MT_RETURN_IF_ERROR(model->Prepare({.B = 4, .T = 64, .mode =
//   core::ModelMode::kTrainRecompute})); MT_ASSIGN_OR_RETURN(int stage, model->FindBlock("h.3"));
#ifndef MEMTRAIN_CORE_MODEL_H_
#define MEMTRAIN_CORE_MODEL_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/backend.h"
#include "core/param_block.h"

namespace memtrain::core {

// One micro-batch. inputs, targets: (B, T) token ids on the host; targets may be null (forward
// only, no loss) and a negative target marks a position without loss. pos_offset is the global
// position of column 0 (non-zero for a sequence shard).
// Image models (core/model/cnn.h) take `images` (B, C, H, W) floats instead of token ids, with
// T = 1 and one class label per image in targets (B).
struct Batch {
  const int32_t* inputs = nullptr;
  const int32_t* targets = nullptr;
  int B = 0;
  int T = 0;
  int pos_offset = 0;
  const float* images = nullptr;
};

// How a model lays out its activations (llm.c's `fill_in_activation_sizes(..., recompute)`).
enum class ModelMode : uint8_t {
  kTrain,           // every block keeps its activations for backward
  kTrainRecompute,  // blocks keep only their input; backward re-runs the block's forward first
  kEval,            // forward only, one lane: no gradients, activations of about two blocks
  kForwardOnly,     // forward only with `lanes` independent lanes (e.g. the ZO + and - passes),
                    // advanced block by block: both lanes pass a block before the next one
};
const char* ModelModeName(ModelMode mode);
inline bool IsTrainingMode(ModelMode m) {
  return m == ModelMode::kTrain || m == ModelMode::kTrainRecompute;
}

struct PrepareOptions {
  int B = 0;
  int T = 0;
  ModelMode mode = ModelMode::kTrain;
  int lanes = 1;  // kForwardOnly only; every other mode has one lane
};

// What a model allocates, per allocator tag (indexed by MemoryTag), as a model's static
// EstimateMemory gives it before anything exists (core::GPT2, core::Cnn).
struct MemoryEstimate {
  std::array<int64_t, kNumMemoryTags> bytes{};
  int64_t& operator[](MemoryTag t) { return bytes[static_cast<int>(t)]; }
  int64_t operator[](MemoryTag t) const { return bytes[static_cast<int>(t)]; }
  int64_t total() const;  // saturating at the int64 maximum
};

// Which pass a stage runs in; hooks see it in every event.
enum class Pass : uint8_t {
  kTrainForward,  // a forward that a Backward will follow
  kBackward,
  kEvalForward,  // a forward for evaluation or sampling (no backward follows)
  kLaneForward,  // one lane of a forward-only multi-lane pass
};
const char* PassName(Pass pass);

class Model {
 public:
  virtual ~Model() = default;
  virtual int num_stages() const = 0;
  // The parameters stage i owns. Every stage owns exactly one block (possibly empty).
  virtual ParamBlock& block(int stage) = 0;
  // Blocks other than its own that stage i reads (e.g. the tied embedding for the LM head):
  // an offload policy must keep them resident while the stage runs.
  virtual std::vector<int> extra_blocks(int stage) const { return {}; }
  // The stage whose block is called `name`; NotFound listing the names otherwise.
  absl::StatusOr<int> FindBlock(absl::string_view name);

  // Allocates activations for micro-batches of (B, T) in a mode. InvalidArgument if the model
  // cannot serve them, ResourceExhausted past a memory budget. Re-preparing frees the old plan
  // first. Forward-only modes allocate no gradients.
  virtual absl::Status Prepare(const PrepareOptions& options) = 0;
  absl::Status Prepare(int B, int T) { return Prepare(PrepareOptions{.B = B, .T = T}); }
  const PrepareOptions& prepared() const { return prepared_; }
  // Checks a batch against the prepared shape and the vocabulary (cheap: O(B*T)).
  virtual absl::Status ValidateBatch(const Batch& batch) const = 0;

  // Runs stage `stage` forward for `lane` (0 unless kForwardOnly) in `ctx`.
  virtual absl::Status ForwardStage(int stage, const Batch& batch, Pass pass, int lane,
                                    const ExecContext& ctx) = 0;
  // loss_scale multiplies d(mean loss) (e.g. 1/accumulation steps). Gradients accumulate into
  // the blocks' gradients, which the engine has allocated.
  virtual absl::Status BackwardStage(int stage, const Batch& batch, float loss_scale,
                                     const ExecContext& ctx) = 0;
  // Mean loss over the positions with a target, of the last forward of `lane`; read when asked
  // (on a device this synchronises).
  virtual double Loss(int lane = 0) const = 0;

 protected:
  PrepareOptions prepared_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_MODEL_H_
