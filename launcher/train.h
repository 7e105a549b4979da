// The training loop behind `trainer job.pbtxt`: builds the model, data, optimizer and process
// grid from a validated job, trains with data parallelism and gradient accumulation, evaluates,
// logs (progress line + JSON Lines metrics on rank 0) and checkpoints.
#ifndef MEMTRAIN_LAUNCHER_TRAIN_H_
#define MEMTRAIN_LAUNCHER_TRAIN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/engine.h"
#include "launcher/job.pb.h"
#include "parallel/communicator.h"

namespace memtrain::launcher {

struct TrainOptions {
  bool resume = false;  // continue from checkpoint.dir/latest
  // Continue from this checkpoint folder (dir/step_NNNNNNNN) instead, e.g. when the newest one is
  // damaged; implies `resume`.
  std::string resume_from{};
  int64_t stop_after = 0;  // end the run after this step (with a checkpoint), as a preemption
  bool quiet = false;      // no progress output (metrics are still written)
  // Extra engine hooks for a C++ caller (logging, custom gradient policies), not owned. They are
  // ordered with the strategy's own hooks by role; an error from one stops the run with its
  // status, on every rank, before anything else is written.
  std::vector<core::StageHooks*> hooks;
};

// `job` must be filled (FillDefaults) and validated (ValidateJob) for world->size() ranks.
// Every rank calls it. Errors are agreed over all ranks before the first collective of the loop.
// After InstallStopHandlers, a SIGTERM or SIGINT on any rank ends the run on every rank after the
// same step, with a checkpoint (if checkpoint.dir is set): Cancelled, whose StopSignal is the
// signal.
absl::Status RunTraining(const Job& job, const TrainOptions& options,
                         parallel::Communicator* world);

// The data checks of the run, for --check: opens the token files and checks their token ids
// against the model's vocabulary and that they hold one batch (B*T+1 tokens) for every data rank;
// the run's own errors. Reads the model's sizes from model.init_from when it has no model.gpt.
absl::Status ValidateData(const Job& job, int data_rank, int data_size);

// SIGTERM and SIGINT ask a run (RunTraining, RunFederated) to stop after the current step or
// round (a second one ends the process at once, by the signal's default action). `announce`:
// print a line when one arrives, saying that the current `unit` ("step", "round") finishes first.
void InstallStopHandlers(bool announce, const char* unit = "step");
// The signal that asked to stop since InstallStopHandlers (0: none).
int PendingStopSignal();
// `stopped` carrying the signal, for StopSignal.
absl::Status WithStopSignal(absl::Status stopped, int sig);
// The signal that stopped a run, from its status (0 if none).
int StopSignal(const absl::Status& s);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_TRAIN_H_
