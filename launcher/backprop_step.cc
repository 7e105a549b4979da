// The backprop strategy: per step, `grad_accum` micro-batches of forward + backward, each block's
// gradient all-reduced over the data x sequence group as soon as its backward is done (the last
// micro-batch only), the loss averaged over the data ranks, the global gradient norm (for
// clipping, the metrics and the non-finite check), and one optimizer step unless the loss or the
// norm is NaN or infinite.
#include <chrono>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "launcher/loop.h"
#include "parallel/data_parallel.h"
#include "parallel/nccl_communicator.h"
#include "parallel/ulysses.h"

namespace memtrain::launcher {
namespace {

using Clock = std::chrono::steady_clock;

class BackpropStrategy : public LoopStrategy {
 public:
  explicit BackpropStrategy(const Job& job) : job_(job) {}

  core::ModelMode mode() const override {
    return job_.train().recompute() ? core::ModelMode::kTrainRecompute : core::ModelMode::kTrain;
  }

  absl::Status Start(LoopContext& ctx) override {
    ctx_ = &ctx;
    const Train& t = job_.train();
    B_ = t.batch_size();
    T_ = t.seq_len();
    accum_ = t.grad_accum();
    D_ = ctx.grid.data().size();
    parallel::Communicator* grads_comm = &ctx.grid.data_sequence();
    // Gradients on a GPU are reduced by NCCL (bootstrapped over the host communicator).
    if (ctx.engine.context().device.type == core::DeviceType::kCuda && grads_comm->size() > 1) {
      MT_ASSIGN_OR_RETURN(nccl_,
                          parallel::CreateNcclCommunicator(*grads_comm, ctx.engine.context()));
      grads_comm = nccl_.get();
    }
    ddp_ = std::make_unique<parallel::DataParallelHooks>(grads_comm);
    ctx.engine.AddHooks(ddp_.get());
    inputs_.resize(static_cast<size_t>(B_) * T_);
    targets_.resize(inputs_.size());
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> Step(int64_t step, float lr, bool log) override {
    Setup& s = ctx_->setup;
    core::Engine& engine = ctx_->engine;
    const core::Batch batch{inputs_.data(), targets_.data(), B_, T_};
    engine.ZeroGrad();
    if (s.ulysses) s.ulysses->ResetCounters();
    double loss = 0.0;
    const float scale = 1.0f / (static_cast<float>(D_) * accum_);
    for (int micro = 0; micro < accum_; ++micro) {
      s.train->Next(inputs_.data(), targets_.data());
      ddp_->set_sync(micro == accum_ - 1);
      if (s.ulysses) {
        // Sequence parallel: this rank's tokens; the loss is the token-weighted mean over the
        // group, and each rank's gradient its share of it (summed with the data ranks' by the
        // all-reduce over the data x sequence group).
        MT_ASSIGN_OR_RETURN(
            parallel::ShardedLoss l,
            parallel::ForwardSharded(engine, batch, *s.ulysses, core::Pass::kTrainForward,
                                     &local_inputs_, &local_targets_));
        loss += l.loss;
        const double share =
            l.valid_global > 0 ? static_cast<double>(l.valid_local) / l.valid_global : 0.0;
        MT_RETURN_IF_ERROR(engine.Backward(l.local, static_cast<float>(share * scale)));
      } else {
        MT_RETURN_IF_ERROR(engine.Forward(batch));
        loss += engine.Loss();
        MT_RETURN_IF_ERROR(engine.Backward(batch, scale));
      }
    }
    const auto t_wait = Clock::now();
    MT_RETURN_IF_ERROR(ddp_->Wait());
    const double wait_ms = 1e3 * std::chrono::duration<double>(Clock::now() - t_wait).count();
    loss /= accum_;
    MT_RETURN_IF_ERROR(
        ctx_->grid.data().AllReduce(&loss, 1, core::DType::kF64, parallel::ReduceOp::kSum).Wait());
    loss /= D_;
    // The gradients are all-reduced: every rank computes the same global norm, every step (one
    // read of the gradients), as a NaN or infinity in any gradient makes it non-finite. Every
    // rank sees the same loss and norm, so all take the same decision below.
    const float clip = job_.optimizer().clip_grad_norm();
    const double grad_norm = s.streamer ? s.streamer->GradNorm() : optim::GlobalGradNorm(*s.model);
    StepResult r;
    r.loss = loss;
    auto name = [](double v) { return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; };
    if (!std::isfinite(loss)) {
      r.nonfinite = absl::StrFormat("the training loss is %s", name(loss));
    } else if (!std::isfinite(grad_norm)) {
      r.nonfinite = absl::StrFormat("the gradient norm is %s (loss %.6g)", name(grad_norm), loss);
    } else {
      MT_RETURN_IF_ERROR(s.opt->set_lr(lr));
      s.opt->Step(optim::ClipScale(grad_norm, clip));
      if (s.streamer) MT_RETURN_IF_ERROR(s.streamer->status());
    }
    s.state.batches_consumed = s.train->batches_consumed();
    r.json_fields = absl::StrFormat(R"(, "comm_wait_ms": %.3f, "grad_norm": %s)", wait_ms,
                                    JsonNumber(grad_norm, "%.6g"));
    absl::StrAppend(&r.json_fields, OffloadFields(s, &offload_last_));
    if (s.ulysses) {  // this rank's all-to-all traffic over the step, per layer
      const parallel::AllToAllCounters& a = s.ulysses->counters();
      const int64_t L = s.model->config().n_layer;
      absl::StrAppendFormat(&r.json_fields,
                            R"(, "a2a_sent_bytes_per_layer": %d, "a2a_recv_bytes_per_layer": %d)",
                            a.sent_bytes / L, a.received_bytes / L);
    }
    return r;
  }

  int64_t tokens_per_step() const override { return static_cast<int64_t>(B_) * T_ * accum_ * D_; }

 private:
  const Job& job_;
  LoopContext* ctx_ = nullptr;
  int B_ = 0, T_ = 0, accum_ = 1, D_ = 1;
  std::unique_ptr<parallel::Communicator> nccl_;  // declared first: the hooks use it
  std::unique_ptr<parallel::DataParallelHooks> ddp_;
  std::vector<int32_t> inputs_, targets_;
  std::vector<int32_t> local_inputs_, local_targets_;  // this sequence rank's tokens
  offload::StreamerStats offload_last_;
};

}  // namespace

std::unique_ptr<LoopStrategy> MakeBackpropStrategy(const Job& job) {
  return std::make_unique<BackpropStrategy>(job);
}

}  // namespace memtrain::launcher
