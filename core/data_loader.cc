#include "core/data_loader.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/philox.h"

namespace memtrain::core {

absl::StatusOr<DataLoader> DataLoader::Create(const TokenFile* tokens, int B, int T, int rank,
                                              int world, std::optional<uint64_t> shuffle_seed) {
  if (B <= 0 || T <= 0 || world <= 0 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(
        absl::StrFormat("data loader: invalid B=%d T=%d rank=%d world=%d", B, T, rank, world));
  }
  DataLoader d;
  d.tokens_ = tokens;
  d.B_ = B;
  d.T_ = T;
  d.rank_ = rank;
  d.world_ = world;
  d.shuffle_seed_ = shuffle_seed;
  const int64_t n = static_cast<int64_t>(B) * T, size = tokens->size();
  if (shuffle_seed) {
    const int64_t windows = size > 0 ? (size - 1) / T : 0;
    d.num_batches_ = windows / (static_cast<int64_t>(world) * B);
  } else {
    // Batch k of rank r starts at (k*W + r)*B*T and needs B*T + 1 tokens; the last rank binds.
    const int64_t room = size - 1 - n - static_cast<int64_t>(world - 1) * n;
    d.num_batches_ = room < 0 ? 0 : room / (n * world) + 1;
  }
  if (d.num_batches_ == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s holds %d tokens, fewer than the %d that one batch of B=%d x T=%d on each of %d "
        "ranks needs; use more data or a smaller batch",
        tokens->path(), size, static_cast<int64_t>(world) * n + 1, B, T, world));
  }
  return d;
}

const std::vector<int64_t>& DataLoader::Permutation(int64_t epoch) {
  if (epoch != perm_epoch_) {
    const int64_t windows = (tokens_->size() - 1) / T_;
    perm_.resize(windows);
    std::iota(perm_.begin(), perm_.end(), 0);
    // Fisher-Yates with Philox(seed, stream = epoch): the same order on every rank.
    for (int64_t i = windows - 1; i > 0; --i) {
      const PhiloxCounter bits = PhiloxBlock(*shuffle_seed_, static_cast<uint64_t>(epoch), i);
      const uint64_t r = (static_cast<uint64_t>(bits[0]) << 32) | bits[1];
      std::swap(perm_[i], perm_[r % static_cast<uint64_t>(i + 1)]);
    }
    perm_epoch_ = epoch;
  }
  return perm_;
}

void DataLoader::Next(int32_t* inputs, int32_t* targets) {
  const uint16_t* tok = tokens_->tokens().data();
  const int64_t epoch = consumed_ / num_batches_, i = consumed_ % num_batches_;
  if (!shuffle_seed_) {
    const int64_t n = static_cast<int64_t>(B_) * T_;
    const uint16_t* src = tok + (i * world_ + rank_) * n;
    for (int64_t k = 0; k < n; ++k) {
      inputs[k] = src[k];
      targets[k] = src[k + 1];
    }
  } else {
    const std::vector<int64_t>& perm = Permutation(epoch);
    for (int b = 0; b < B_; ++b) {
      const uint16_t* src = tok + perm[(i * world_ + rank_) * B_ + b] * T_;
      for (int t = 0; t < T_; ++t) {
        inputs[b * T_ + t] = src[t];
        targets[b * T_ + t] = src[t + 1];
      }
    }
  }
  ++consumed_;
}

}  // namespace memtrain::core
