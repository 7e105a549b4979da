#include "core/data_loader.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"

namespace memtrain::core {

absl::StatusOr<DataLoader> DataLoader::Create(const TokenFile* tokens, int B, int T, int rank,
                                              int world) {
  if (B <= 0 || T <= 0 || world <= 0 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(
        absl::StrFormat("data loader: invalid B=%d T=%d rank=%d world=%d", B, T, rank, world));
  }
  const int64_t need = static_cast<int64_t>(world) * B * T + 1;
  if (tokens->size() < need) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s holds %d tokens, fewer than the %d that one batch of B=%d x T=%d on each of %d "
        "ranks needs; use more data or a smaller batch",
        tokens->path(), tokens->size(), need, B, T, world));
  }
  DataLoader d;
  d.tokens_ = tokens;
  d.B_ = B;
  d.T_ = T;
  d.rank_ = rank;
  d.world_ = world;
  d.position_ = d.start();
  return d;
}

void DataLoader::Next(int32_t* inputs, int32_t* targets) {
  const int64_t n = static_cast<int64_t>(B_) * T_;
  if (position_ + n + 1 > tokens_->size()) position_ = start();
  const uint16_t* src = tokens_->tokens().data() + position_;
  for (int64_t i = 0; i < n; ++i) {
    inputs[i] = src[i];
    targets[i] = src[i + 1];
  }
  position_ += n * world_;
}

int64_t DataLoader::num_batches() const {
  // Batch k starts at start() + k*n*W and needs n + 1 tokens.
  const int64_t n = static_cast<int64_t>(B_) * T_;
  const int64_t room = tokens_->size() - 1 - n - start();
  return room < 0 ? 0 : room / (n * world_) + 1;
}

absl::StatusOr<float> EvaluateLoss(Engine& engine, DataLoader& loader, int max_batches) {
  const int B = loader.B(), T = loader.T();
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const Batch batch{inputs.data(), targets.data(), B, T};
  const int64_t n = std::min<int64_t>(max_batches, loader.num_batches());
  loader.Reset();
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    loader.Next(inputs.data(), targets.data());
    MT_ASSIGN_OR_RETURN(float loss, engine.Forward(batch));
    sum += loss;
  }
  return n > 0 ? static_cast<float>(sum / n) : 0.0f;
}

}  // namespace memtrain::core
