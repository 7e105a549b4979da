#include "launcher/train.h"

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint.h"
#include "core/evaluate.h"
#include "core/threads.h"
#include "launcher/agree.h"
#include "launcher/loop.h"
#include "optim/schedule.h"

namespace memtrain::launcher {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

absl::Status RunTraining(const Job& job, const TrainOptions& options,
                         parallel::Communicator* world) {
  const Parallel& par = job.parallel();
  MT_ASSIGN_OR_RETURN(parallel::ProcessGrid grid,
                      parallel::ProcessGrid::Create(world, {.data = par.data(),
                                                            .sequence = par.sequence(),
                                                            .perturbation = par.perturbation()}));
  const int D = grid.data().size(), rank = world->rank();
  std::unique_ptr<LoopStrategy> strategy = MakeBackpropStrategy(job);
  Setup s;
  MT_RETURN_IF_ERROR(
      AgreeOnStatus(world, BuildSetup(job, options, grid.data_rank(), D, strategy->mode(), &s)));
  // Only now that every rank can run is the metrics file created (or truncated).
  Reporter report;
  absl::Status opened;
  if (rank == 0) {
    opened = report.Open(job.output().metrics(),
                         options.resume ? std::optional<int64_t>(s.state.step) : std::nullopt,
                         options.quiet);
  }
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, opened));

  const Train& t = job.train();
  const Schedule& sch = job.schedule();
  optim::LrSchedule lr_at{.peak = PeakLr(job.optimizer()),
                          .warmup_steps = sch.warmup_steps(),
                          .total_steps = t.steps(),
                          .decay = sch.decay() == Schedule::COSINE   ? optim::Decay::kCosine
                                   : sch.decay() == Schedule::LINEAR ? optim::Decay::kLinear
                                                                     : optim::Decay::kConstant,
                          .min_ratio = sch.min_lr_ratio()};
  core::Engine engine(s.model.get());
  for (core::StageHooks* h : options.hooks) engine.AddHooks(h);
  LoopContext ctx{job, options, grid, s, engine};
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, strategy->Start(ctx)));
  const int64_t tokens_per_step = strategy->tokens_per_step();
  const int64_t last_step =
      options.stop_after > 0 ? std::min<int64_t>(options.stop_after, t.steps()) : t.steps();
  if (rank == 0) {
    report.Line(absl::StrFormat(
        "%s, %d parameters; %d data rank(s) x %d threads; global batch %d tokens; "
        "%s state %.1f MiB; %s%s",
        s.model->config().ToString(), s.model->num_parameters(), D, core::GetThreads(),
        tokens_per_step, s.opt->name(), s.opt->state_bytes() / 1048576.0,
        core::ModelModeName(strategy->mode()),
        options.resume ? absl::StrFormat("; resuming at step %d", s.state.step) : ""));
    report.Json(absl::StrFormat(
        R"({"event": "start", "step": %d, "params": %d, "opt_state_bytes": %d, "world": %d})",
        s.state.step, s.model->num_parameters(), s.opt->state_bytes(), world->size()));
  }

  auto evaluate = [&]() -> absl::StatusOr<double> {
    const int per_rank = (t.eval_batches() + D - 1) / D;
    MT_ASSIGN_OR_RETURN(float local_loss, core::EvaluateLoss(engine, *s.val, per_rank));
    double sum = local_loss;
    MT_RETURN_IF_ERROR(
        grid.data().AllReduce(&sum, 1, core::DType::kF64, parallel::ReduceOp::kSum).Wait());
    return sum / D;
  };

  const auto t_start = Clock::now();
  const int64_t first_step = s.state.step;
  for (int64_t step = first_step; step < last_step; ++step) {
    const auto t0 = Clock::now();
    const float lr = lr_at.At(step);
    const bool log = rank == 0 && ((step + 1) % t.log_every() == 0 || step + 1 == last_step);
    absl::StatusOr<StepResult> stepped = strategy->Step(step, lr, log);
    MT_RETURN_IF_ERROR(AgreeOnStatus(world, stepped.status()));
    const StepResult& result = *stepped;
    s.state.step = step + 1;
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
    const double eta = elapsed / (step + 1 - first_step) * (last_step - step - 1);

    if (rank == 0) {
      if (log) {
        report.Json(absl::StrFormat(
            R"({"step": %d, "loss": %.9g, "lr": %.9g, "tokens_per_sec": %.1f, "step_ms": %.3f%s})",
            step + 1, result.loss, lr, tokens_per_step / dt, 1e3 * dt, result.json_fields));
      }
      report.Progress(absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | "
                                      "%.0f ms/step | ETA %s",
                                      step + 1, t.steps(), result.loss, lr, tokens_per_step / dt,
                                      1e3 * dt, Hms(eta)),
                      log);
    }
    const bool final_step = step + 1 == last_step;
    if (s.val && ((t.eval_every() > 0 && (step + 1) % t.eval_every() == 0) || final_step)) {
      MT_ASSIGN_OR_RETURN(double val, evaluate());
      if (rank == 0) {
        report.Json(absl::StrFormat(R"({"step": %d, "val_loss": %.9g})", step + 1, val));
        report.Line(absl::StrFormat("step %d/%d | val_loss %.4f", step + 1, t.steps(), val));
      }
    }
    const Checkpoint& c = job.checkpoint();
    if (!c.dir().empty() && ((c.every() > 0 && (step + 1) % c.every() == 0) || final_step)) {
      absl::Status saved = rank == 0 ? SaveCheckpoint(c.dir(), c.keep(), s.state, *s.model, *s.opt)
                                     : absl::OkStatus();
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, saved));
      if (rank == 0) {
        report.Line(absl::StrFormat("step %d/%d | checkpoint %s/step_%08d", step + 1, t.steps(),
                                    c.dir(), step + 1));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace memtrain::launcher
