// Optimizers over a model's flat blocks. Every optimizer updates one block in ONE fused pass over
// its flat (params, grads, state), so it can run block by block (and, with offload, on the host
// for a block that is not resident). Weight decay follows parameter groups given by the views:
// by default matrices are decayed and biases / norm weights (1-D views) are not. A block with a
// mask (core::ParamBlock::SetMask) keeps its pruned weights exactly 0 under every optimizer.
//
// The optimizer holds its current learning rate: the config's lr at first, changed only by
// set_lr (a schedule calls it every step). Step uses lr().
//
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<optim::Optimizer> opt,
//                       optim::Lion::Create(model.get(), {.lr = 3e-4f, .weight_decay = 1.0f}));
//   MT_RETURN_IF_ERROR(opt->set_lr(schedule.At(step)));
//   float scale = optim::ClipScale(optim::GlobalGradNorm(*model), /*max_norm=*/1.0f);
//   opt->Step(scale);
#ifndef MEMTRAIN_OPTIM_OPTIMIZER_H_
#define MEMTRAIN_OPTIM_OPTIMIZER_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"

namespace memtrain::optim {

// Which views get weight decay.
struct DecayPolicy {
  bool decay_1d = false;              // also decay 1-D views (biases, norm weights)
  std::vector<std::string> no_decay;  // views whose name matches are never decayed
                                      // (a name or a "<block>.<name>", e.g. "wpe", "h.0.fcw")
  bool Decays(const std::string& block, const core::ParamView& view) const;
};

// Where the state of a newly created optimizer lives.
enum class StateAllocation {
  kNow,    // zero-filled state for every block on the blocks' device, at Create
  kLater,  // none yet: an offload policy binds each block's state (BindState) where it keeps
           // it, or AllocateState allocates it all
};

// Elements [begin, begin + count) of block `stage`, in buffers that may be anywhere (a device
// slot, host memory): params, grads and one pointer per state tensor (state_names()), each
// pointing at element `begin`. `device` says where they live (the update runs there).
struct BlockRange {
  int stage = 0;
  int64_t begin = 0;
  int64_t count = 0;
  float* params = nullptr;
  const float* grads = nullptr;  // null for an optimizer that needs none (zeroth-order)
  std::vector<void*> state;
  core::Device device = core::Device::Cpu();
};

class Optimizer;

// Who runs the block updates of Optimizer::Step. By default the optimizer itself (StepBlock for
// every stage, where the blocks live); an offload policy installs one that steps each block where
// its state lives, or defers a block's update until the block is next resident (ZO2).
class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Called after BeginStep; runs (or schedules) every block's update with `grad_scale`. A runner
  // that can fail keeps the error for its owner to report.
  virtual void RunStep(Optimizer& opt, float grad_scale) = 0;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;

  // The learning rate of the next steps. set_lr: InvalidArgument unless finite and >= 0 (the
  // learning rate is then unchanged).
  float lr() const { return lr_; }
  absl::Status set_lr(float lr);

  // One step over every block with lr(): BeginStep, then StepBlock for each stage (or the step
  // runner's equivalent). grad_scale multiplies every gradient (global-norm clipping), folded
  // into the same pass.
  void Step(float grad_scale = 1.0f);
  // Not owned; null restores the default.
  void set_step_runner(StepRunner* runner) { runner_ = runner; }
  StepRunner* step_runner() const { return runner_; }
  void BeginStep() { ++step_; }
  // Updates one block from its current params, grads and state (nothing when a backward has not
  // given it gradients, for optimizers that need them).
  virtual void StepBlock(int stage, float grad_scale);
  // Updates a range of a block held in any buffers (see BlockRange): the same arithmetic, so a
  // block stepped in pieces on the host equals one stepped whole where it lives. Call after
  // BeginStep, like StepBlock.
  void StepRange(const BlockRange& r, float grad_scale);

  // Zeroes all state in place (no reallocation) and sets step() to 0: the next Step is that of a
  // freshly created optimizer (e.g. a federated client starting a round). lr() is kept.
  virtual void Reset();

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  // Named state tensors of a stage ("m", "v", "momentum_buffer"), for checkpoints; undefined
  // tensors for a block whose state is neither allocated nor bound.
  std::vector<std::pair<std::string, core::Tensor>> State(int stage) const;
  int64_t state_bytes() const;
  // The names of each block's state tensors and their element type (the same for every block).
  const std::vector<std::string>& state_names() const { return state_names_; }
  core::DType state_dtype() const { return state_dtype_; }
  virtual bool needs_grads() const { return true; }

  // ---- state held elsewhere (offload) ----
  // Zero-filled state for every block that has none, on the blocks' device (tag kOptimizer).
  absl::Status AllocateState();
  // Frees every block's state (bound state is only forgotten).
  void ReleaseState();
  // Makes block `stage` use `state` (one tensor per state_names(), numel elements of
  // state_dtype(), any device) until UnbindState; InvalidArgument for a wrong count or size.
  absl::Status BindState(int stage, std::vector<core::Tensor> state);
  void UnbindState(int stage);
  // Where the updates run (the default context of the blocks' device unless set; on CUDA the
  // stream the backward ran on, so the step is ordered after it).
  const core::ExecContext& context() const { return ctx_; }
  void set_context(const core::ExecContext& ctx) { ctx_ = ctx; }

 protected:
  Optimizer(core::Model* model, float lr, DecayPolicy decay)
      : model_(model),
        decay_(std::move(decay)),
        lr_(lr),
        ctx_(core::ExecContext::For(model ? model->block(0).device() : core::Device::Cpu())) {}
  // Runs fn(offset, count, weight_decay_factor) over the trainable views of a block, in order;
  // adjacent views with the same decay are merged, so a block is still one pass over memory.
  template <typename Fn>
  void ForEachDecayRange(int stage, Fn fn) const;
  // InvalidArgument for a null model (every Create checks it first).
  static absl::Status CheckModel(const core::Model* model);
  // The block's mask (null when it has none), for the kernels.
  const uint8_t* Mask(int stage) const;
  // Declares the state each block has (called by a subclass's constructor).
  void DeclareState(std::vector<std::string> names, core::DType dtype);
  // One update over a range (a subclass's kernel calls). r.state follows state_names().
  virtual void UpdateRange(const BlockRange& r, float grad_scale) = 0;
  // Runs fn(offset, count, decay) over the decay ranges of a block clipped to [begin, end);
  // offset is in block elements.
  template <typename Fn>
  void ForEachDecayRange(int stage, int64_t begin, int64_t end, Fn fn) const;
  // The optimizer's context, or the host's when the range lives elsewhere.
  core::ExecContext ContextFor(core::Device device) const {
    return device == ctx_.device ? ctx_ : core::ExecContext::For(device);
  }

  core::Model* model_;
  DecayPolicy decay_;
  float lr_;
  core::ExecContext ctx_;
  int64_t step_ = 0;
  StepRunner* runner_ = nullptr;
  std::vector<std::string> state_names_;
  core::DType state_dtype_ = core::DType::kF32;
  std::vector<std::vector<core::Tensor>> state_;  // [stage][state name], when allocated or bound
};

// sqrt(sum of squares) over every block's gradient; one fused read per block, in double. Under
// data parallelism call it after the gradients are all-reduced: every rank then holds the global
// gradient and gets the same norm.
double GlobalGradNorm(core::Model& model);
// The factor that brings `norm` down to `max_norm` (1 if already below; max_norm <= 0: off).
float ClipScale(double norm, float max_norm);

template <typename Fn>
void Optimizer::ForEachDecayRange(int stage, int64_t lo, int64_t hi, Fn fn) const {
  ForEachDecayRange(stage, [&](int64_t off, int64_t n, bool decay) {
    const int64_t a = off > lo ? off : lo, b = off + n < hi ? off + n : hi;
    if (b > a) fn(a, b - a, decay);
  });
}

template <typename Fn>
void Optimizer::ForEachDecayRange(int stage, Fn fn) const {
  const core::ParamBlock& b = model_->block(stage);
  int64_t begin = 0, end = 0;
  bool decay = false;
  for (const core::ParamView& v : b.views()) {
    if (!v.trainable) {  // not updated: ends the current range
      if (end > begin) fn(begin, end - begin, decay);
      begin = end = v.offset + v.numel;
      continue;
    }
    const bool d = decay_.Decays(b.name(), v);
    if (end > begin && d != decay) {
      fn(begin, end - begin, decay);
      begin = end;
    }
    decay = d;
    end = v.offset + v.numel;
  }
  if (end > begin) fn(begin, end - begin, decay);
}

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_OPTIMIZER_H_
