// Batches from an llm.c token file in llm.c's order: a batch is B*T+1 consecutive tokens, the
// targets are the inputs shifted by one. With W data-parallel ranks, rank r at step s reads from
// token (s*W + r)*B*T; when the next batch would run past the end, every rank wraps to its start.
//
//   MT_ASSIGN_OR_RETURN(core::DataLoader loader, core::DataLoader::Create(&tokens, B, T));
//   loader.Next(inputs.data(), targets.data());   // (B, T) each
#ifndef MEMTRAIN_CORE_DATA_LOADER_H_
#define MEMTRAIN_CORE_DATA_LOADER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/llmc.h"

namespace memtrain::core {

class DataLoader {
 public:
  // InvalidArgument naming the file if it holds fewer than W*B*T + 1 tokens.
  static absl::StatusOr<DataLoader> Create(const TokenFile* tokens, int B, int T, int rank = 0,
                                           int world = 1);

  // Fills inputs and targets, (B, T) each, and advances.
  void Next(int32_t* inputs, int32_t* targets);
  void Reset() { position_ = start(); }
  // Token offset of the next batch; restoring it resumes the same sequence of batches.
  int64_t position() const { return position_; }
  void set_position(int64_t p) { position_ = p; }
  int B() const { return B_; }
  // Batches before the loader wraps around.
  int64_t num_batches() const;
  int T() const { return T_; }

 private:
  int64_t start() const { return static_cast<int64_t>(rank_) * B_ * T_; }

  const TokenFile* tokens_ = nullptr;
  int B_ = 0, T_ = 0, rank_ = 0, world_ = 1;
  int64_t position_ = 0;
};

// Mean loss over up to `max_batches` batches read from `loader` (from its start; forward only).
// The engine's model must be prepared for the loader's (B, T).
absl::StatusOr<float> EvaluateLoss(Engine& engine, DataLoader& loader, int max_batches);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_DATA_LOADER_H_
