#include "launcher/train.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint.h"
#include "core/allocator.h"
#include "core/evaluate.h"
#include "core/threads.h"
#include "launcher/agree.h"
#include "launcher/loop.h"
#include "optim/schedule.h"

namespace memtrain::launcher {

namespace {
using Clock = std::chrono::steady_clock;

constexpr char kSignalPayload[] = "memtrain/stop-signal";
std::atomic<int> stop_signal{0};
bool announce_stop = false;
char stop_message[160];  // written before the handlers are installed; read by them
int stop_message_len = 0;

void OnStopSignal(int sig) {
  if (stop_signal.exchange(sig) != 0) {  // the second one: at once
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  if (announce_stop) {
    [[maybe_unused]] ssize_t n = write(STDERR_FILENO, stop_message, stop_message_len);
  }
}

}  // namespace

int PendingStopSignal() { return stop_signal.load(); }

absl::Status WithStopSignal(absl::Status stopped, int sig) {
  stopped.SetPayload(kSignalPayload, absl::Cord(absl::StrCat(sig)));
  return stopped;
}

void InstallStopHandlers(bool announce, const char* unit) {
  announce_stop = announce;
  stop_message_len = std::snprintf(stop_message, sizeof stop_message,
                                   "\ntrainer: stop requested: finishing the %s and saving a "
                                   "checkpoint (signal again to stop at once)\n",
                                   unit);
  stop_message_len = std::min<int>(stop_message_len, sizeof stop_message - 1);
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

int StopSignal(const absl::Status& s) {
  absl::optional<absl::Cord> p = s.GetPayload(kSignalPayload);
  int sig = 0;
  return p && absl::SimpleAtoi(std::string(*p), &sig) ? sig : 0;
}

absl::Status RunTraining(const Job& job, const TrainOptions& options,
                         parallel::Communicator* world) {
  const Parallel& par = job.parallel();
  MT_ASSIGN_OR_RETURN(parallel::ProcessGrid grid,
                      parallel::ProcessGrid::Create(world, {.data = par.data(),
                                                            .sequence = par.sequence(),
                                                            .perturbation = par.perturbation()}));
  const int D = grid.data().size(), rank = world->rank();
  const bool resuming = options.resume || !options.resume_from.empty();
  std::unique_ptr<LoopStrategy> strategy =
      job.optimizer().has_zo() ? MakeZoStrategy(job) : MakeBackpropStrategy(job);
  Setup s;
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, BuildSetup(job, options, grid.data_rank(), D,
                                                     strategy->mode(), &s, &grid.sequence())));
  // Only now that every rank can run is the metrics file created (or truncated).
  Reporter report;
  absl::Status opened;
  const Checkpoint& c = job.checkpoint();
  if (rank == 0) {
    opened =
        report.Open(job.output().metrics(),
                    resuming ? std::optional<int64_t>(s.state.step) : std::nullopt, options.quiet);
    // Temporary folders of saves that a dead process left (kill -9, a full disk).
    if (!c.dir().empty()) {
      const int removed = checkpoint::RemoveStaleTemporaries(c.dir());
      if (removed > 0) {
        report.Line(absl::StrFormat("%s: cleaned up %d temporary folder(s) of interrupted saves",
                                    c.dir(), removed));
      }
    }
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
  if (s.streamer) engine.AddHooks(s.streamer.get());  // first of the memory hooks
  for (core::StageHooks* h : options.hooks) engine.AddHooks(h);
  LoopContext ctx{job, options, grid, s, engine};
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, strategy->Start(ctx)));
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, ApplyDeviceBudget(job, s)));
  // Set up on every rank: from here on the job's own watchdog timeout.
  parallel::SetCollectiveTimeout(job.parallel().collective_timeout_s());
  const int64_t tokens_per_step = strategy->tokens_per_step();
  const int64_t last_step =
      options.stop_after > 0 ? std::min<int64_t>(options.stop_after, t.steps()) : t.steps();
  if (rank == 0) {
    report.Line(
        absl::StrFormat("%s, %d parameters; %d data rank(s) x %d threads; global batch %d tokens; "
                        "%s state %.1f MiB; %s%s",
                        s.model->config().ToString(), s.model->num_parameters(), D,
                        core::GetThreads(), tokens_per_step, s.opt->name(),
                        s.opt->state_bytes() / 1048576.0, core::ModelModeName(strategy->mode()),
                        resuming ? absl::StrFormat("; resuming at step %d", s.state.step) : ""));
    report.Json(absl::StrFormat(
        R"({"event": "start", "step": %d, "params": %d, "opt_state_bytes": %d, "world": %d})",
        s.state.step, s.model->num_parameters(), s.opt->state_bytes(), world->size()));
  }

  auto evaluate = [&]() -> absl::StatusOr<double> {
    const int per_rank = (t.eval_batches() + D - 1) / D;
    double sum = 0;
    if (s.ulysses) {  // the same on the ranks of a sequence group
      MT_ASSIGN_OR_RETURN(sum, parallel::EvaluateSharded(engine, *s.val, per_rank, *s.ulysses));
    } else {
      MT_ASSIGN_OR_RETURN(float local_loss, core::EvaluateLoss(engine, *s.val, per_rank));
      sum = local_loss;
    }
    MT_RETURN_IF_ERROR(
        grid.data().AllReduce(&sum, 1, core::DType::kF64, parallel::ReduceOp::kSum).Wait());
    return sum / D;
  };

  const int64_t first_step = s.state.step;
  if (s.val && t.eval_at_start() && first_step < last_step) {
    MT_ASSIGN_OR_RETURN(double val, evaluate());
    if (rank == 0) {
      report.Json(absl::StrFormat(R"({"step": %d, "val_loss": %s})", first_step, JsonNumber(val)));
      report.Line(absl::StrFormat("step %d/%d | val_loss %.4f (before the first step)", first_step,
                                  t.steps(), val));
    }
  }
  const auto t_start = Clock::now();
  int64_t skipped = 0, skipped_in_a_row = 0;
  for (int64_t step = first_step; step < last_step; ++step) {
    const auto t0 = Clock::now();
    const float lr = lr_at.At(step);
    const bool log = rank == 0 && ((step + 1) % t.log_every() == 0 || step + 1 == last_step);
    absl::StatusOr<StepResult> stepped = strategy->Step(step, lr, log);
    // A failed metrics write on rank 0 (the previous step's lines) stops every rank here too, and
    // a stop signal on any rank makes every rank stop after this step.
    int stop = PendingStopSignal();
    MT_RETURN_IF_ERROR(
        AgreeOnStatus(world, !stepped.ok() ? stepped.status() : report.status(), &stop));
    const StepResult& result = *stepped;
    s.state.step = step + 1;
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
    const double eta = elapsed / (step + 1 - first_step) * (last_step - step - 1);
    const bool bad = !result.nonfinite.empty();  // the same on every rank
    if (bad) {
      ++skipped;
      ++skipped_in_a_row;
    } else {
      skipped_in_a_row = 0;
    }

    if (rank == 0) {
      if (log || bad) {  // a non-finite step is always logged
        // The most tensor memory the run has held on its device so far (the allocator's count).
        const double peak_mib = core::GetMemoryStats(s.model->block(0).device()).peak / 1048576.0;
        report.Json(absl::StrFormat(
            R"({"step": %d, "loss": %s, "lr": %s, "tokens_per_sec": %s, "step_ms": %.3f, )"
            R"("peak_mib": %.2f%s%s})",
            step + 1, JsonNumber(result.loss), JsonNumber(lr),
            JsonNumber(tokens_per_step / dt, "%.1f"), 1e3 * dt, peak_mib, result.json_fields,
            bad ? R"(, "skipped": true)" : ""));
      }
      report.Progress(absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | "
                                      "%.0f ms/step | ETA %s",
                                      step + 1, t.steps(), result.loss, lr, tokens_per_step / dt,
                                      1e3 * dt, Hms(eta)),
                      log || bad);
    }
    if (bad) {
      std::string kept = absl::StrFormat(
          "nothing of this step was applied (the weights and optimizer state are those after "
          "step %d)",
          step);
      if (rank == 0 && !c.dir().empty()) {
        absl::StatusOr<std::string> latest = LatestCheckpoint(c.dir());
        absl::StrAppend(&kept, latest.ok() ? absl::StrFormat("; the last checkpoint, %s, is "
                                                             "intact",
                                                             *latest)
                                           : std::string("; no checkpoint was saved yet"));
      }
      if (t.on_nonfinite() == Train::STOP) {
        // Every rank sees the same result, so every rank stops here; only rank 0 prints.
        return absl::AbortedError(
            rank != 0 ? ""
                      : absl::StrFormat(
                            "step %d: %s; stopping (train.on_nonfinite = STOP): %s. Lower the "
                            "learning rate, add warm-up or set optimizer.clip_grad_norm, then "
                            "resume with --resume; or set train.on_nonfinite = SKIP to skip such "
                            "steps",
                            step + 1, result.nonfinite, kept));
      }
      if (t.max_consecutive_skips() > 0 && skipped_in_a_row >= t.max_consecutive_skips()) {
        return absl::AbortedError(
            rank != 0 ? ""
                      : absl::StrFormat(
                            "step %d: %s; %d steps in a row were skipped "
                            "(train.max_consecutive_skips = %d), the training has diverged; "
                            "stopping: %s. Lower the learning rate and resume from an earlier "
                            "checkpoint with --resume_from",
                            step + 1, result.nonfinite, skipped_in_a_row, t.max_consecutive_skips(),
                            kept));
      }
      if (rank == 0) {
        report.Line(absl::StrFormat("step %d/%d | skipped: %s (train.on_nonfinite = SKIP)",
                                    step + 1, t.steps(), result.nonfinite));
      }
    }
    const bool final_step = step + 1 == last_step;
    const bool stopping = stop != 0 && !final_step;
    if (s.val && ((t.eval_every() > 0 && (step + 1) % t.eval_every() == 0) || final_step)) {
      MT_ASSIGN_OR_RETURN(double val, evaluate());
      if (rank == 0) {
        report.Json(absl::StrFormat(R"({"step": %d, "val_loss": %s})", step + 1, JsonNumber(val)));
        report.Line(absl::StrFormat("step %d/%d | val_loss %.4f", step + 1, t.steps(), val));
      }
    }
    if (!c.dir().empty() &&
        ((c.every() > 0 && (step + 1) % c.every() == 0) || final_step || stopping)) {
      // Rank 0 saves; a metrics write error stops the run before the save.
      absl::Status saved = rank != 0               ? absl::OkStatus()
                           : !report.status().ok() ? report.status()
                                                   : SaveSetup(job, s);
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, saved));
      if (rank == 0) {
        report.Line(absl::StrFormat("step %d/%d | checkpoint %s/step_%08d", step + 1, t.steps(),
                                    c.dir(), step + 1));
      }
    }
    if (stopping) {
      const std::string name = stop == SIGINT ? "SIGINT" : stop == SIGTERM ? "SIGTERM" : "signal";
      if (rank == 0) {
        report.Json(absl::StrFormat(
            R"({"event": "stopped", "step": %d, "signal": "%s", "skipped_steps": %d})", step + 1,
            name, skipped));
      }
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, rank == 0 ? report.Close() : absl::OkStatus()));
      absl::Status stopped = absl::CancelledError(
          rank != 0 ? ""
                    : absl::StrFormat(
                          "stopped by %s after step %d of %d; %s", name, step + 1, t.steps(),
                          c.dir().empty()
                              ? "no checkpoint was saved (checkpoint.dir is empty)"
                              : absl::StrFormat("checkpoint %s/step_%08d saved: continue with "
                                                "--resume",
                                                c.dir(), step + 1)));
      return WithStopSignal(std::move(stopped), stop);
    }
  }
  if (rank == 0) {
    report.Json(absl::StrFormat(R"({"event": "end", "step": %d, "skipped_steps": %d})",
                                s.state.step, skipped));
  }
  // The metrics file is complete only if its last writes and its close succeeded.
  return AgreeOnStatus(world, rank == 0 ? report.Close() : absl::OkStatus());
}

absl::Status SaveSetup(const Job& job, Setup& s) {
  const Checkpoint& c = job.checkpoint();
  if (!s.streamer) return SaveCheckpoint(c.dir(), c.keep(), s.state, *s.model, *s.opt);
  // The streamed blocks and the state on the tier, seen as host tensors for the save.
  MT_RETURN_IF_ERROR(s.streamer->BindHostCopies());
  absl::Status saved = SaveCheckpoint(c.dir(), c.keep(), s.state, *s.model, *s.opt);
  saved.Update(s.streamer->UnbindHostCopies(/*write_back=*/false));
  return saved;
}

std::string OffloadFields(Setup& s, offload::StreamerStats* last) {
  if (!s.streamer) return "";
  const offload::StreamerStats now = s.streamer->stats();
  std::string out = absl::StrFormat(
      R"(, "offload_read_mib": %.1f, "offload_written_mib": %.1f, "offload_wait_ms": %.3f)",
      (now.bytes_read - last->bytes_read) / 1048576.0,
      (now.bytes_written - last->bytes_written) / 1048576.0, now.wait_ms - last->wait_ms);
  *last = now;
  return out;
}

}  // namespace memtrain::launcher
