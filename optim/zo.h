// Zeroth-order fine-tuning (MeZO, Malladi et al. 2023): no backward, no gradients, no activations
// kept across blocks. Per step and sample i, two forward lanes see the weights moved by +eps*z_i
// and -eps*z_i; the projected gradient g_i = (l+ - l-) / (2 eps) (in double) scales z_i in the
// update theta -= lr * (mean_i g_i z_i + wd * theta), or theta -= lr * mean_i sign(g_i) z_i
// (ZO-SignSGD). z is Philox noise keyed by (step seed, block id, sample, element), so it is the
// same on any rank, device, block order or offload setting, and is regenerated, never stored.
//
// The weights are never moved in place: ZoPerturbation (a kMemory hook) binds every block a
// stage reads to a scratch copy theta + s*eps*z for the lane's sign s, so after a step with lr = 0
// the weights are bit-identical to before, and the tied embedding (block 0, also read by the
// head) is perturbed once, the same way wherever it is read.
//
//   MT_RETURN_IF_ERROR(model->Prepare({.B = B, .T = T, .mode = core::ModelMode::kForwardOnly,
//                                      .lanes = 2 * config.samples}));
//   MT_ASSIGN_OR_RETURN(auto zo, optim::ZoSgd::Create(model.get(), config));
//   MT_ASSIGN_OR_RETURN(optim::ZoStepResult r,
//                       zo->Step(engine, batch, optim::ZoStepSeed(job_seed, step)));
#ifndef MEMTRAIN_OPTIM_ZO_H_
#define MEMTRAIN_OPTIM_ZO_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/model.h"
#include "core/tensor.h"
#include "optim/optimizer.h"

namespace memtrain::optim {

struct ZoConfig {
  float lr = 1e-6f;           // learning rate (>= 0; 0 leaves the weights bit-identical)
  float eps = 1e-3f;          // perturbation scale (> 0)
  float weight_decay = 0.0f;  // on matrices and embeddings only (ParamView::decay)
  int samples = 1;            // q: perturbation directions per step (2q forward lanes)
  bool sign = false;          // ZO-SignSGD: theta -= lr * mean_i sign(g_i) z_i
  // Where one rank runs both lanes of a sample, keep the noise of the + lane for the - lane (one
  // draw per weight instead of two, one more scratch of the largest block); the same bits.
  bool cache_noise = true;

  // InvalidArgument naming the field ("ZoConfig::eps = 0: must be > 0 ...").
  absl::Status Validate() const;
};

// The seed of step `step` of a job seeded `seed`: the same on every rank, no message needed.
uint64_t ZoStepSeed(uint64_t seed, int64_t step);

// The Philox stream of block `block_id`'s noise for sample `sample`.
inline uint64_t ZoStream(int block_id, int sample) {
  return (static_cast<uint64_t>(block_id) << 32) | static_cast<uint32_t>(sample);
}

// Binds, for lane l of a kLaneForward pass, every block the stage reads to theta + s*eps*z of
// sample l / 2 (s = +1 for even lanes, -1 for odd ones), and unbinds them after the stage.
class ZoPerturbation final : public core::StageHooks {
 public:
  // Scratch of the largest block (two: a stage's own block and the one it also reads); with
  // cache_noise, Set adds as much again for the noise of the + lanes where it can be used.
  static absl::StatusOr<std::unique_ptr<ZoPerturbation>> Create(core::Model* model,
                                                                bool cache_noise = false);
  core::HookRole role() const override { return core::HookRole::kMemory; }
  // Local lane k is global lane first + k * stride (perturbation parallelism splits the 2q
  // lanes over the ranks of a group); the sign and sample come from the global lane.
  // With cache_noise and stride 1 (this rank runs both lanes of each sample) the first call
  // allocates the noise cache (ResourceExhausted past the budget); another stride frees it.
  absl::Status Set(uint64_t step_seed, float eps, int first = 0, int stride = 1);
  absl::Status BeforeForward(const core::StageEvent& e) override;
  absl::Status AfterForward(const core::StageEvent& e) override;

 private:
  explicit ZoPerturbation(core::Model* model) : model_(model) {}
  absl::Status Bind(core::ParamBlock& block, int slot, int lane, const core::ExecContext& ctx);

  core::Model* model_;
  core::Tensor scratch_[2];  // f32: slot 0 the largest block, slot 1 the largest second one
  // With cache_noise: the standard normals of the + lane per slot, and whose they are (block id,
  // sample, step seed) while valid; allocated when a rank first runs both lanes of a sample.
  bool cache_noise_ = false;
  core::Tensor noise_[2];
  struct Cached {
    bool valid = false;
    int block = 0, sample = 0;
    uint64_t seed = 0;
  } cached_[2];
  std::vector<core::ParamBlock*> bound_;
  uint64_t seed_ = 0;
  float eps_ = 0.0f;
  int first_ = 0, stride_ = 1;
};

struct ZoStepResult {
  std::vector<double> loss_plus, loss_minus;  // per sample
  std::vector<double> projected_grad;         // g_i = (l+ - l-) / (2 eps), per sample
  double loss() const;                        // mean of (l+ + l-) / 2 over the samples
};

// An optim::Optimizer without state ("zo"): checkpoints, set_lr and schedules work as for the
// others. Step(engine, batch, seed) measures and updates; the inherited Step() applies the update
// of the last measurement block by block (StepBlock), as offload needs.
class ZoSgd final : public Optimizer {
 public:
  // The model must be prepared kForwardOnly with at least 2 * samples lanes before Step. Weight
  // decay goes to the views `decay` picks (matrices and embeddings by default).
  static absl::StatusOr<std::unique_ptr<ZoSgd>> Create(core::Model* model, ZoConfig config,
                                                       DecayPolicy decay = {});
  ~ZoSgd() override;
  const char* name() const override { return "zo"; }

  // One step on `batch`: the 2q lanes, the projected gradients, then the update with lr() (no
  // update, and the step not counted, when a loss is not finite: check the result). `engine`
  // must run the model.
  absl::StatusOr<ZoStepResult> Step(core::Engine& engine, const core::Batch& batch,
                                    uint64_t step_seed);
  // The two halves of Step, for runs over several ranks. MeasureLanes runs this rank's lanes
  // (set_lanes) and returns the 2q lane losses, 0 for the lanes other ranks run: summed over the
  // ranks of a perturbation group each lane's loss is exact (x + 0 = x). Finish takes the 2q
  // losses (averaged over data ranks by the caller), computes g and updates (every rank alike).
  void set_lanes(int first, int stride);
  int local_lanes() const;  // lanes this rank runs: prepare the model with at least as many
  absl::StatusOr<std::vector<double>> MeasureLanes(core::Engine& engine, const core::Batch& batch,
                                                   uint64_t step_seed);
  ZoStepResult Finish(uint64_t step_seed, const std::vector<double>& lane_losses);
  using Optimizer::Step;
  bool needs_grads() const override { return false; }

  const ZoConfig& config() const { return config_; }

 private:
  ZoSgd(core::Model* model, ZoConfig config, DecayPolicy decay)
      : Optimizer(model, config.lr, std::move(decay)), config_(config) {
    DeclareState({}, core::DType::kF32);
  }
  void UpdateRange(const BlockRange& r, float grad_scale) override;

  ZoConfig config_;
  std::unique_ptr<ZoPerturbation> perturb_;
  uint64_t seed_ = 0;      // of the last Finish
  std::vector<double> g_;  // its projected gradients
  int first_lane_ = 0, lane_stride_ = 1;
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_ZO_H_
