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

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;

  // The learning rate of the next steps. set_lr: InvalidArgument unless finite and >= 0 (the
  // learning rate is then unchanged).
  float lr() const { return lr_; }
  absl::Status set_lr(float lr);

  // One step over every block with lr(): BeginStep, then StepBlock for each stage. grad_scale
  // multiplies every gradient (global-norm clipping), folded into the same pass.
  void Step(float grad_scale = 1.0f);
  void BeginStep() { ++step_; }
  virtual void StepBlock(int stage, float grad_scale) = 0;

  // Zeroes all state in place (no reallocation) and sets step() to 0: the next Step is that of a
  // freshly created optimizer (e.g. a federated client starting a round). lr() is kept.
  virtual void Reset();

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  // Named state tensors of a stage ("m", "v", "momentum_buffer"), for checkpoints.
  virtual std::vector<std::pair<std::string, core::Tensor>> State(int stage) const = 0;
  int64_t state_bytes() const;
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
  // Runs fn(offset, count, weight_decay_factor) over the views of a block, in order; adjacent
  // views with the same decay are merged, so a block is still one pass over memory.
  template <typename Fn>
  void ForEachDecayRange(int stage, Fn fn) const;
  // InvalidArgument for a null model (every Create checks it first).
  static absl::Status CheckModel(const core::Model* model);
  // The block's mask (null when it has none), for the kernels.
  const uint8_t* Mask(int stage) const;
  // One zero-filled flat state tensor per block (tag kOptimizer), touched up front so the first
  // step does not pay for page faults.
  absl::StatusOr<std::vector<core::Tensor>> ZeroState(core::DType dtype) const;

  core::Model* model_;
  DecayPolicy decay_;
  float lr_;
  core::ExecContext ctx_;
  int64_t step_ = 0;
};

// sqrt(sum of squares) over every block's gradient; one fused read per block, in double. Under
// data parallelism call it after the gradients are all-reduced: every rank then holds the global
// gradient and gets the same norm.
double GlobalGradNorm(core::Model& model);
// The factor that brings `norm` down to `max_norm` (1 if already below; max_norm <= 0: off).
float ClipScale(double norm, float max_norm);

template <typename Fn>
void Optimizer::ForEachDecayRange(int stage, Fn fn) const {
  const core::ParamBlock& b = model_->block(stage);
  int64_t begin = 0, end = 0;
  bool decay = false;
  for (const core::ParamView& v : b.views()) {
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
