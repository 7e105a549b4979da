// Training checkpoints: one folder per step, written atomically.
//
//   <dir>/step_00000100/model.safetensors      weights, named "<block>.<view>" (e.g. "h.3.qkvw")
//   <dir>/step_00000100/optimizer.safetensors  optimizer state, "<block>.<state>" (flat), e.g.
//                                              "h.3.m" / "h.3.v" for AdamW, "h.3.m" for Lion
//   <dir>/step_00000100/state.json             step, data position, model sizes, job spec, and
//                                              the size and CRC-32 of both files
//   <dir>/latest                               the name of the newest complete checkpoint
//
// The folder is assembled under a temporary name, every file fsynced, then renamed: a kill at any
// moment leaves the previous checkpoint intact and `latest` pointing at a complete one. Loading
// checks sizes and checksums first and refuses a damaged checkpoint with DataLoss.
//
// A library of its own (memtrain::checkpoint): it needs core and optim only, no protobuf, no MPI.
#ifndef MEMTRAIN_CHECKPOINT_CHECKPOINT_H_
#define MEMTRAIN_CHECKPOINT_CHECKPOINT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/gpt2.h"
#include "core/safetensors.h"
#include "optim/optimizer.h"

namespace memtrain::checkpoint {

struct TrainState {
  int64_t step = 0;              // optimizer steps completed
  int64_t batches_consumed = 0;  // training micro-batches this rank's loader returned
  std::string job_text;          // the effective job spec, for the record
};

// Writes <dir>/step_NNNNNNNN and updates <dir>/latest; keeps the `keep` checkpoints written last
// (in the order they were written, not by step: a run that restarts at a lower step in the same
// folder never loses what it wrote), never deleting the one just written. Refuses (Aborted,
// nothing written) weights or optimizer state holding a NaN or infinity. On any error the
// temporary folder is removed and the previous checkpoints and `latest` are as they were.
absl::Status SaveCheckpoint(const std::string& dir, int keep, const TrainState& state,
                            core::GPT2& model, const optim::Optimizer& opt);

// How every checkpoint folder is written, whatever it holds (GPT-2 jobs, federated jobs):
// files go into dir/<name>.tmp.<pid>; Publish writes state.json there, replaces dir/<name>
// atomically (an existing one only once the new one is complete), points dir/latest at it and
// keeps the `keep` checkpoints written last (never the new one or `latest`). A writer destroyed
// without a successful Publish removes its temporary folder.
//
//   MT_ASSIGN_OR_RETURN(auto w, checkpoint::CheckpointWriter::Begin(dir, "step_00000010"));
//   core::WriteSafetensors(w->tmp() + "/model.safetensors", ...);
//   manifest["serial"] = w->serial();
//   MT_RETURN_IF_ERROR(w->Publish(manifest.dump(2), keep));
class CheckpointWriter {
 public:
  // Creates `dir` (PermissionDenied naming checkpoint.dir) and the temporary folder.
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Begin(const std::string& dir,
                                                                 const std::string& name);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  const std::string& tmp() const { return tmp_; }
  const std::string& final_dir() const { return final_dir_; }
  // The write order of this checkpoint in `dir` (one more than any there), for state.json.
  int64_t serial() const { return serial_; }
  absl::Status Publish(const std::string& state_json, int keep);

 private:
  CheckpointWriter() = default;
  std::string dir_, name_, final_dir_, tmp_;
  int64_t serial_ = 1;
  bool published_ = false;
};

// The newest checkpoint folder in `dir` (from <dir>/latest, whose surrounding whitespace is
// ignored); NotFound if there is none, DataLoss if `latest` names a folder that is not there.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& dir);

// The checkpoint folders in `dir` (<dir>/step_NNNNNNNN), the last written first.
std::vector<std::string> ListCheckpoints(const std::string& dir);

// Cleans up after interrupted saves: removes temporaries (`step_N.tmp.PID`, `latest.tmp.PID`)
// whose process is gone, and resolves `step_N.old` left between the two renames of a save that
// replaced step_N. Returns how many entries it removed or restored.
int RemoveStaleTemporaries(const std::string& dir);

struct LoadedCheckpoint {
  std::unique_ptr<core::GPT2> model;
  TrainState state;
  core::SafetensorsFile optimizer;
};

// Loads a checkpoint folder (step_NNNNNNNN). Verifies sizes and checksums before using anything.
absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& folder);
// Copies the saved optimizer state and step count into `opt`, an optimizer over `model` (which
// may have been moved out of the checkpoint). InvalidArgument if the checkpoint was written by
// another kind of optimizer.
absl::Status RestoreOptimizer(const LoadedCheckpoint& ckpt, core::GPT2& model,
                              optim::Optimizer* opt);

// A model from an llm.c file or a memtrain checkpoint folder (weights only).
absl::StatusOr<std::unique_ptr<core::GPT2>> LoadModel(const std::string& path);

}  // namespace memtrain::checkpoint

#endif  // MEMTRAIN_CHECKPOINT_CHECKPOINT_H_
