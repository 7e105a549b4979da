// The zeroth-order strategy (optimizer { zo { ... } }): per step one batch, 2q forward lanes with
// the weights moved by +-eps*z (optim::ZoSgd), the projected gradients, and the update. The model
// is prepared forward-only: no gradients, no activations kept across blocks. The step's seed is
// derived from (optimizer.zo.seed, step), so a resumed run draws the same noise.
#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "launcher/loop.h"
#include "optim/zo.h"

namespace memtrain::launcher {
namespace {

class ZoStrategy : public LoopStrategy {
 public:
  explicit ZoStrategy(const Job& job) : job_(job) {}

  core::ModelMode mode() const override { return core::ModelMode::kForwardOnly; }

  absl::Status Start(LoopContext& ctx) override {
    ctx_ = &ctx;
    zo_ = dynamic_cast<optim::ZoSgd*>(ctx.setup.opt.get());
    if (zo_ == nullptr) return absl::InternalError("the zo strategy needs the zo optimizer");
    // Perturbation parallelism: rank p of a group of P runs the lanes p, p + P, ...; data
    // parallelism: the data ranks read different batches. Only scalars cross ranks.
    P_ = ctx.grid.perturbation().size();
    D_ = ctx.grid.data().size();
    zo_->set_lanes(ctx.grid.perturbation_rank(), P_);
    B_ = job_.train().batch_size();
    T_ = job_.train().seq_len();
    // BuildSetup prepared one lane; the step runs 2 per sample.
    MT_RETURN_IF_ERROR(ctx.setup.model->Prepare(
        {.B = B_, .T = T_, .mode = core::ModelMode::kForwardOnly, .lanes = zo_->local_lanes()}));
    inputs_.resize(static_cast<size_t>(B_) * T_);
    targets_.resize(inputs_.size());
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> Step(int64_t step, float lr, bool log) override {
    Setup& s = ctx_->setup;
    s.train->Next(inputs_.data(), targets_.data());
    const core::Batch batch{inputs_.data(), targets_.data(), B_, T_};
    // `step` counts from 0 here; the seed is that of the 1-based step being taken.
    const uint64_t seed = optim::ZoStepSeed(job_.optimizer().zo().seed(), step);
    MT_ASSIGN_OR_RETURN(std::vector<double> losses, zo_->MeasureLanes(ctx_->engine, batch, seed));
    const int64_t n = static_cast<int64_t>(losses.size());
    // Each lane was run by one rank of the group (0 elsewhere): the sum is exact.
    if (P_ > 1) {
      MT_RETURN_IF_ERROR(
          ctx_->grid.perturbation()
              .AllReduce(losses.data(), n, core::DType::kF64, parallel::ReduceOp::kSum)
              .Wait());
    }
    if (D_ > 1) {  // the mean over the data ranks' batches (equal token counts)
      MT_RETURN_IF_ERROR(
          ctx_->grid.data()
              .AllReduce(losses.data(), n, core::DType::kF64, parallel::ReduceOp::kSum)
              .Wait());
      for (double& l : losses) l /= D_;
    }
    // The learning rate is set only now: with offload the update of the previous step is applied
    // to each block as it arrives in the forward above, with that step's learning rate.
    MT_RETURN_IF_ERROR(zo_->set_lr(lr));
    const optim::ZoStepResult z = zo_->Finish(seed, losses);
    StepResult r;
    r.loss = z.loss();
    double g = 0;
    for (double v : z.projected_grad) g += v;
    g /= static_cast<double>(z.projected_grad.size());
    if (!std::isfinite(r.loss)) {
      r.nonfinite = absl::StrFormat("a perturbed loss is not finite (loss+ %g, loss- %g)",
                                    z.loss_plus[0], z.loss_minus[0]);
    }
    s.state.batches_consumed = s.train->batches_consumed();
    r.json_fields = absl::StrFormat(R"(, "loss_plus": %s, "loss_minus": %s, "projected_grad": %s)",
                                    JsonNumber(z.loss_plus[0], "%.9g"),
                                    JsonNumber(z.loss_minus[0], "%.9g"), JsonNumber(g, "%.6g"));
    absl::StrAppend(&r.json_fields, OffloadFields(s, &offload_last_));
    return r;
  }

  int64_t tokens_per_step() const override { return static_cast<int64_t>(B_) * T_ * D_; }

 private:
  const Job& job_;
  LoopContext* ctx_ = nullptr;
  optim::ZoSgd* zo_ = nullptr;
  int B_ = 0, T_ = 0, P_ = 1, D_ = 1;
  std::vector<int32_t> inputs_, targets_;
  offload::StreamerStats offload_last_;
};

}  // namespace

std::unique_ptr<LoopStrategy> MakeZoStrategy(const Job& job) {
  return std::make_unique<ZoStrategy>(job);
}

}  // namespace memtrain::launcher
