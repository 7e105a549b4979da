// Federated jobs behind `trainer job.pbtxt` when the job has a `federated` section: FedAvg rounds
// (federated/fedavg.h) of model.cnn over simulated clients holding a Dirichlet split of
// Fashion-MNIST, with optional pruning (federated/pruning.h), instead of the token loop of
// RunTraining. One "step" of the job is one round: train.steps rounds, checkpoints every
// checkpoint.every rounds, --resume / --resume_from / --stop_after and SIGTERM as for RunTraining.
//
// Every rank loads Fashion-MNIST, draws the same partition (federated.seed) and builds the same
// model, local optimizer, FedAvg and pruner; the clients of a round are dealt round-robin over the
// ranks and the averaged model is the same bit for bit on any number of ranks. Rank 0 evaluates
// on the test set, writes the metrics (one JSON line per round) and the checkpoints, and saves the
// partition with the run (checkpoint.dir/partition.json, or next to output.metrics).
//
// Checkpoints: checkpoint.dir/step_NNNNNNNN (NNNNNNNN = rounds done) with
//   model.safetensors  every view of every block, "<block>.<view>" (f32; BatchNorm's running
//                      statistics included: "conv0.bn_mean", ...)
//   masks.safetensors  the pruning masks, "<block>.mask" (u8, the block's flat size, 1 = kept);
//                      only when some block has a mask
//   state.json         "memtrain-federated/1": the round, the write serial, the model's layers,
//                      the partition's parameters, the pruning method and the chosen candidate, the
//                      size and CRC-32 of each file, the effective job
// assembled in step_N.tmp.PID and renamed into place; checkpoint.dir/latest names the newest (as
// for GPT-2 checkpoints: checkpoint::LatestCheckpoint, RemoveStaleTemporaries and the retention by
// write order apply). The clients' optimizers hold no state across rounds, so there is none to
// save. A resumed run re-runs the pruner's start (before round 0, a pure function of the initial
// weights and federated.seed) and then loads the weights and masks: it ends bit-identical to an
// uninterrupted run.
#ifndef MEMTRAIN_LAUNCHER_FEDERATED_H_
#define MEMTRAIN_LAUNCHER_FEDERATED_H_

#include "absl/status/status.h"
#include "launcher/job.pb.h"
#include "launcher/train.h"
#include "parallel/communicator.h"

namespace memtrain::launcher {

// `job` must be filled and validated (ValidateJob) for world->size() ranks and have `federated`.
// Every rank calls it. Errors before the first round (a missing or damaged dataset, a partition
// that cannot be drawn, a bad checkpoint) are agreed over all ranks before anything is written.
// After InstallStopHandlers (launcher/train.h), SIGTERM or SIGINT on any rank end the run on every
// rank after the same round, with a checkpoint (if checkpoint.dir is set): Cancelled, whose
// StopSignal (launcher/train.h) is the signal.
absl::Status RunFederated(const Job& job, const TrainOptions& options,
                          parallel::Communicator* world);

// The data checks of a federated run, for --check: reads Fashion-MNIST (errors name the file) and
// draws the client partition (errors name the federated.* field), as the run does.
absl::Status ValidateFederatedData(const Job& job);

// SIGTERM and SIGINT ask RunFederated to stop after the current round (a second one ends the

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_FEDERATED_H_
