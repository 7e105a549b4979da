// Ulysses sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023): the P ranks of a sequence
// group each hold T_r of the T tokens of every sequence (rank r: tokens [offset_r, offset_r +
// T_r), T_r = T / P, the first T % P ranks one more). Everything but attention is token-local and
// runs on the shard. Attention needs every token of a head, so UlyssesAttention, the model's
// core::Attention, exchanges:
//   forward:  q, k, v packed together, ONE all-to-all-v: sequence-sharded (B, T_r, 3C) ->
//             head-sharded (B, T, 3 C_r) for the rank's NH_r heads (NH / P, the first NH % P
//             ranks one more); the local kernel over the whole sequence; one all-to-all-v brings
//             out (and the softmax statistics lse) back to (B, T_r, C).
//   backward: d(out) goes to the heads (with q, k, v, out and lse too unless this layer's
//             head-sharded tensors were kept: UlyssesOptions::keep_exchanged), the local
//             backward kernel, and one all-to-all-v brings dq, dk, dv back to the tokens.
// Uneven splits go through explicit per-rank counts; more ranks than heads or than tokens is
// refused by Prepare. The byte counters count what leaves and reaches the rank.
//
//   parallel::UlyssesAttention ulysses(&grid.sequence(), /*T=*/global_T);
//   model->set_attention(&ulysses);
//   MT_RETURN_IF_ERROR(model->Prepare({.B = B, .T = ulysses.local_T()}));
//   core::Batch local = parallel::ShardBatch(global, ulysses, inputs, targets);  // pos_offset set
#ifndef MEMTRAIN_PARALLEL_ULYSSES_H_
#define MEMTRAIN_PARALLEL_ULYSSES_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/attention.h"
#include "core/data_loader.h"
#include "core/engine.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace memtrain::parallel {

// n items split over `parts`: part i has n / parts, the first n % parts one more, in order.
inline int64_t SplitCount(int64_t n, int parts, int i) {
  return n / parts + (i < n % parts ? 1 : 0);
}
inline int64_t SplitOffset(int64_t n, int parts, int i) {
  return i * (n / parts) + (i < n % parts ? i : n % parts);
}

struct UlyssesOptions {
  // In a training plan without recompute, keep each layer's head-sharded q, k, v, out and lse
  // from forward for its backward (about as many bytes as the layer's own q, k, v, out), so
  // backward exchanges only d(out) on the way in. Off: backward exchanges them again.
  bool keep_exchanged = true;
};

// Bytes of all-to-all traffic to and from the other ranks of the group (a rank's chunk for
// itself is a copy and not counted), since the last Reset.
struct AllToAllCounters {
  int64_t sent_bytes = 0, received_bytes = 0, exchanges = 0;
};

// Bytes UlyssesAttention::Prepare allocates (by allocator tag).
struct UlyssesBytes {
  int64_t activations = 0, scratch = 0;
};

class UlyssesAttention final : public core::Attention {
 public:
  // `sequence` (not owned) is the sequence group, `T` the global sequence length.
  UlyssesAttention(Communicator* sequence, int64_t T, UlyssesOptions options = {});

  int64_t T() const { return T_; }
  int64_t local_T() const { return SplitCount(T_, P_, r_); }
  int64_t offset() const { return SplitOffset(T_, P_, r_); }

  // InvalidArgument naming the job fields: T < P (a rank without tokens), NH < P (a rank
  // without heads), C not divisible by NH.
  static absl::Status Check(int64_t T, int64_t NH, int64_t C, int P);

  // What Prepare(shape) allocates on sequence rank r of P for a global length T (shape.T is
  // the rank's share); for the memory estimate before anything is allocated.
  static UlyssesBytes Estimate(const core::AttentionShape& shape, int64_t T, int P, int r,
                               UlyssesOptions options);

  absl::Status Prepare(const core::AttentionShape& shape) override;
  absl::Status Forward(const core::AttentionCall& call, float* out, float* lse,
                       const float* qkv) override;
  absl::Status Backward(const core::AttentionCall& call, float* dqkv, const float* dout,
                        const float* qkv, const float* out, const float* lse) override;

  Communicator& group() { return *comm_; }
  const AllToAllCounters& counters() const { return counters_; }
  void ResetCounters() { counters_ = {}; }

 private:
  // Elements of each buffer; kept_sets sets of (qkv, out, lse).
  struct Sizes {
    int64_t kept_sets = 1, qkv = 0, out = 0, lse = 0, send = 0, recv = 0;
  };
  static Sizes SizesFor(const core::AttentionShape& shape, int64_t T, int P, int r,
                        UlyssesOptions options);
  // The head-sharded tensors of one layer: q, k, v (B, T, 3 C_r), out (B, T, C_r), lse
  // (B, NH_r, T).
  struct Heads {
    core::Tensor qkv, out, lse;
  };
  Heads& HeadsOf(int layer);
  absl::Status Exchange(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                        const std::vector<int64_t>& recv_counts);
  int64_t HeadCols(int j) const { return heads_[j] * HS_; }  // C_j
  int64_t HeadCol0(int j) const { return head0_[j] * HS_; }

  Communicator* comm_;
  int64_t T_;
  UlyssesOptions options_;
  int P_, r_;
  // Prepared shape.
  int64_t B_ = 0, C_ = 0, NH_ = 0, HS_ = 0;
  std::vector<int64_t> heads_, head0_, tokens_, token0_;  // per rank: NH_j, first head, T_i, first
  bool per_layer_ = false;
  std::vector<Heads> kept_;  // per layer, or one
  int held_layer_ = -1;      // the layer whose tensors kept_[0] holds (one set only)
  bool training_ = false;
  core::Tensor send_, recv_;
  AllToAllCounters counters_;
};

// The forward of this rank's share of a global batch (ShardBatch into the buffers) and the
// token-weighted mean loss over the sequence group (the same on every rank: one all-reduce of a
// double). Engine::Backward(local, loss_scale * valid_local / valid_global) then gives each rank
// its share of the gradient of that mean; summed over the group it is the gradient of the loss.
struct ShardedLoss {
  double loss = 0;  // mean over the global batch's valid targets (0 if none)
  int64_t valid_local = 0, valid_global = 0;
  core::Batch local;
};
absl::StatusOr<ShardedLoss> ForwardSharded(core::Engine& engine, const core::Batch& global,
                                           UlyssesAttention& attention, core::Pass pass,
                                           std::vector<int32_t>* inputs,
                                           std::vector<int32_t>* targets);
// core::EvaluateLoss for a sequence-parallel model: the mean of `max_batches` global batches'
// token-weighted losses.
absl::StatusOr<double> EvaluateSharded(core::Engine& engine, core::DataLoader& loader,
                                       int max_batches, UlyssesAttention& attention);

// The rank's tokens of a global (B, T) batch: inputs and targets copied into (B, T_r) buffers
// (resized), positions global (pos_offset), targets those of the global sequence.
core::Batch ShardBatch(const core::Batch& global, const UlyssesAttention& attention,
                       std::vector<int32_t>* inputs, std::vector<int32_t>* targets);

}  // namespace memtrain::parallel

#endif  // MEMTRAIN_PARALLEL_ULYSSES_H_
