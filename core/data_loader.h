// Batches from an llm.c token file. Two orders:
//  - sequential (llm.c's): a batch is B*T+1 consecutive tokens, targets are the inputs shifted by
//    one; with W data-parallel ranks, rank r's j-th batch starts at token (j*W + r)*B*T, wrapping
//    to the start when the next batch would run past the end;
//  - shuffled: the file is cut into windows of T+1 tokens (stride T); each epoch visits them in a
//    permutation drawn from Philox(seed, epoch), rank r taking windows (i*W + r)*B .. +B-1.
// The whole state is the number of batches consumed, so a checkpoint stores one integer.
//
//   MT_ASSIGN_OR_RETURN(core::DataLoader loader, core::DataLoader::Create(&tokens, B, T));
//   loader.Next(inputs.data(), targets.data());   // (B, T) each
#ifndef MEMTRAIN_CORE_DATA_LOADER_H_
#define MEMTRAIN_CORE_DATA_LOADER_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "core/token_file.h"

namespace memtrain::core {

class DataLoader {
 public:
  // InvalidArgument naming the file if it cannot give every rank one batch.
  // shuffle_seed: nullopt = sequential order.
  static absl::StatusOr<DataLoader> Create(const TokenFile* tokens, int B, int T, int rank = 0,
                                           int world = 1,
                                           std::optional<uint64_t> shuffle_seed = std::nullopt);

  // Fills inputs and targets, (B, T) each, and advances.
  void Next(int32_t* inputs, int32_t* targets);
  void Reset() { consumed_ = 0; }
  // Batches this loader has returned; Seek(n) makes the next batch the one after n of them.
  int64_t batches_consumed() const { return consumed_; }
  void Seek(int64_t consumed) { consumed_ = consumed; }
  // Batches per pass over the data (before the order wraps or a new epoch starts).
  int64_t num_batches() const { return num_batches_; }
  int B() const { return B_; }
  int T() const { return T_; }

 private:
  const std::vector<int64_t>& Permutation(int64_t epoch);

  const TokenFile* tokens_ = nullptr;
  int B_ = 0, T_ = 0, rank_ = 0, world_ = 1;
  std::optional<uint64_t> shuffle_seed_;
  int64_t num_batches_ = 0;
  int64_t consumed_ = 0;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_DATA_LOADER_H_
