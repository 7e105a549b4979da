// The pieces every training loop shares, and the strategy interface that makes one loop serve
// backprop (with data parallelism), zeroth-order steps and federated rounds. RunTraining (train.cc)
// owns the common part: the process grid, setup agreed over all ranks, the reporter, the progress
// line, validation, checkpoints and stopping. A strategy owns what one step means:
//
//   backprop_step.cc   forward + backward + gradient all-reduce + optimizer step
//   (zeroth-order steps and federated rounds plug in as further strategies)
//
//   class MyStep : public LoopStrategy { ... };
//   absl::StatusOr<StepResult> r = strategy->Step(step, lr);
#ifndef MEMTRAIN_LAUNCHER_LOOP_H_
#define MEMTRAIN_LAUNCHER_LOOP_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "core/data_loader.h"
#include "core/engine.h"
#include "core/llmc.h"
#include "core/model/gpt2.h"
#include "launcher/job.pb.h"
#include "launcher/make_optimizer.h"
#include "launcher/reporter.h"
#include "launcher/train.h"
#include "offload/streamer.h"
#include "optim/optimizer.h"
#include "parallel/process_grid.h"
#include "parallel/ulysses.h"

namespace memtrain::launcher {

using checkpoint::LatestCheckpoint;
using checkpoint::LoadCheckpoint;
using checkpoint::LoadedCheckpoint;
using checkpoint::LoadModel;
using checkpoint::RestoreOptimizer;
using checkpoint::SaveCheckpoint;
using checkpoint::TrainState;

// Everything a rank builds before the first collective of the loop.
struct Setup {
  // With parallel.sequence > 1: the model's attention (BuildSetup makes it; declared first, so
  // that it outlives the model that points to it).
  std::unique_ptr<parallel::UlyssesAttention> ulysses;
  std::unique_ptr<core::GPT2> model;
  std::optional<core::TokenFile> train_tokens, val_tokens;
  std::optional<core::DataLoader> train, val;
  std::unique_ptr<optim::Optimizer> opt;
  // With offload { tier: HOST|SSD }: the layer streamer (declared after the model and the
  // optimizer, so that it goes first). RunTraining adds it to the engine.
  std::unique_ptr<offload::LayerStreamer> streamer;
  TrainState state;
};

// Builds the model (fresh, from init_from, or from the latest checkpoint with --resume), the
// data loaders of this data rank, and the optimizer. Local: no collectives.
// With `sequence` (the grid's sequence group, size > 1) the model runs Ulysses attention over it
// and is prepared for this rank's share of train.seq_len.
absl::Status BuildSetup(const Job& job, const TrainOptions& options, int data_rank, int data_size,
                        core::ModelMode mode, Setup* s, parallel::Communicator* sequence = nullptr);

// A damaged newest checkpoint (DataLoss from reading `damaged` in `dir`; other errors pass):
// the message says how to resume from the one before it, or that there is none.
absl::Status WithOlderCheckpoints(const absl::Status& s, const std::string& dir,
                                  const std::string& damaged);

// Opens the token files and makes this data rank's loaders: the vocabulary check (ids below
// `vocab`) and one batch of B*T+1 tokens per data rank. ValidateData (--check) runs the same.
absl::Status OpenData(const Job& job, int vocab, int data_rank, int data_size, Setup* s);

// What a strategy reports for one step.
struct StepResult {
  double loss = 0.0;  // the same on every rank
  // Extra fields of the step's metrics line, each starting with ", " (e.g. `, "grad_norm": 1.2`);
  // JSON numbers only (JsonNumber writes null for a NaN).
  std::string json_fields;
  // Non-empty when the step's loss or gradients were NaN or infinite, saying which (e.g. "the
  // gradient norm is inf"): the strategy then applied no update, so the weights and the optimizer
  // state are those before the step, and RunTraining stops or skips (train.on_nonfinite). The
  // same on every rank.
  std::string nonfinite;
};

// What a strategy may use; owned by RunTraining.
struct LoopContext {
  const Job& job;
  const TrainOptions& options;
  parallel::ProcessGrid& grid;
  Setup& setup;
  core::Engine& engine;
};

class LoopStrategy {
 public:
  virtual ~LoopStrategy() = default;
  // The model mode this strategy prepares (forward-only lanes for ZO, recompute, ...).
  virtual core::ModelMode mode() const = 0;
  // Called once, after setup: install hooks, check what the job asks of this strategy.
  virtual absl::Status Start(LoopContext& ctx) = 0;
  // One optimizer step at learning rate `lr`; `log` says rank 0 will log this step (a strategy
  // may skip work only needed for logging otherwise). Errors must be the same on every rank.
  virtual absl::StatusOr<StepResult> Step(int64_t step, float lr, bool log) = 0;
  // Tokens consumed per step over all ranks (for tokens/s).
  virtual int64_t tokens_per_step() const = 0;
};

// Backprop with data parallelism (over the data x sequence group) and gradient accumulation.
std::unique_ptr<LoopStrategy> MakeBackpropStrategy(const Job& job);
// Zeroth-order steps (optimizer.zo): forward-only lanes, no gradients (launcher/zo_step.cc).
std::unique_ptr<LoopStrategy> MakeZoStrategy(const Job& job);

// The offload counters of the steps since the last call, as metrics fields (", "offload_...":
// ...); "" without offload.
std::string OffloadFields(Setup& s, offload::StreamerStats* last);

// offload.device_budget_mib: refuses a job whose device tensors (all allocated once the strategy
// has started) exceed it, naming the smallest budget that works, then sets it.
absl::Status ApplyDeviceBudget(const Job& job, Setup& s);

// Saves a checkpoint of `s` (with offload, through host copies of the streamed blocks).
absl::Status SaveSetup(const Job& job, Setup& s);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_LOOP_H_
