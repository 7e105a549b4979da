// Pruning for federated rounds: a mask per block (core::ParamBlock::SetMask; every optimizer keeps
// pruned weights exactly 0) on the prunable weights, the conv and head matrices ("w" views).
//
//   kOneShot: magnitude pruning at the server before round 0 to the target density, per layer,
//             the first conv layer dense (the baseline);
//   kFedTiny: FedTiny (ICDCS 2023). Adaptive BatchNorm selection before round 0: candidate masks
//             around the target density (per-layer densities within +-50% of it, magnitude-
//             pruned, the first layer dense); the first round's clients recompute BN statistics
//             forward-only under each, the server averages them (sample-weighted), the clients
//             evaluate each candidate with them, and the lowest mean loss wins. Then progressive
//             pruning: in adjustment rounds one layer is revised, output side first; K =
//             ceil(rate * nonzeros) with the rate cosine-decayed from initial_rate; each client
//             keeps only the top-K accumulated gradient magnitudes of the layer's pruned
//             positions (TopKHeap, K entries: its memory budget) and sends (index, value) pairs;
//             the server sums them, prunes the K smallest active weights and grows the K largest
//             aggregated gradients (new weights start at 0).
//
//   MT_ASSIGN_OR_RETURN(auto pruner, federated::Pruner::Create(model, {.method = kFedTiny,
//                                                                      .density = 0.1}));
//   MT_RETURN_IF_ERROR(pruner->Start(fed));                 // before round 0
//   for (r ...) { pruner->BeforeRound(fed, r); fed.Round(r); pruner->AfterRound(fed, r); }
#ifndef MEMTRAIN_FEDERATED_PRUNING_H_
#define MEMTRAIN_FEDERATED_PRUNING_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model/cnn.h"
#include "federated/fedavg.h"

namespace memtrain::federated {

enum class PruneMethod { kNone, kOneShot, kFedTiny };

struct PruneOptions {
  PruneMethod method = PruneMethod::kNone;
  double density = 1.0;  // target fraction of the prunable weights kept, in (0, 1]
  // FedTiny.
  int candidates = 5;         // adaptive BN selection: candidate masks (>= 1)
  int bn_batches = 4;         // batches per client for BN statistics and candidate losses
  int adjust_rounds = 10;     // rounds with an adjustment (the first ones); 0 = none
  double initial_rate = 0.1;  // K = ceil(rate * nonzeros), rate cosine-decayed to 0
  uint64_t seed = 0;          // the candidates' per-layer densities

  // InvalidArgument naming the field (PruneOptions::density, ...).
  absl::Status Validate() const;
};

// Keeps the K entries of largest |value| among what is pushed; a pushed index already held adds
// to its value. Exactly the K largest for distinct indices (tested).
class TopKHeap {
 public:
  explicit TopKHeap(int64_t k) : k_(k) {}
  void Push(int64_t index, float value);
  // (index, value) by decreasing |value|.
  std::vector<std::pair<int64_t, float>> Sorted() const;
  int64_t size() const { return static_cast<int64_t>(heap_.size()); }
  void Clear();

 private:
  void SiftUp(size_t i);
  void SiftDown(size_t i);
  int64_t k_;
  std::vector<std::pair<int64_t, float>> heap_;  // min-heap by |value|
  std::unordered_map<int64_t, size_t> where_;    // index -> heap position
};

class Pruner : public ClientPlugin {
 public:
  static absl::StatusOr<std::unique_ptr<Pruner>> Create(core::Cnn* model, PruneOptions options);

  // Before round 0 (every rank alike): sets the masks (nothing for kNone).
  absl::Status Start(FedAvg& fed);
  // Around each round: FedTiny's adjustment rounds install this object as the round's client
  // plugin and revise one layer's mask after it.
  absl::Status BeforeRound(FedAvg& fed, int64_t round);
  absl::Status AfterRound(FedAvg& fed, int64_t round);

  // After masks were restored into the blocks (a checkpoint): takes them as the current masks.
  void SyncFromModel();

  // Kept fraction of each prunable layer ("conv0.w", ...) and overall.
  std::vector<std::pair<std::string, double>> Densities() const;
  double density() const;
  // Which candidate adaptive BN selection chose, and the candidates' mean losses.
  int chosen_candidate() const { return chosen_; }
  const std::vector<double>& candidate_losses() const { return candidate_losses_; }
  // The (index, value) pairs the clients of the last round sent, in bytes (8 per pair).
  int64_t round_bytes_up() const { return round_bytes_; }
  // The layer the last adjustment revised (-1: none) and its K.
  int adjusted_layer() const { return adjusted_; }
  int64_t adjusted_k() const { return k_; }

  // ClientPlugin.
  void BeginClient(int client) override;
  void AfterBackward(int client, core::Cnn& model) override;
  int64_t message_doubles() const override { return 2 * k_; }
  std::vector<double> EndClient(int client) override;
  absl::Status Aggregate(const std::vector<std::vector<double>>& messages,
                         const std::vector<int>& clients,
                         const std::vector<double>& weights) override;

 private:
  struct Layer {
    int stage = 0;
    int64_t offset = 0, numel = 0;  // of the "w" view in the block
  };
  Pruner(core::Cnn* model, PruneOptions options) : model_(model), options_(options) {}
  // Magnitude masks: per prunable layer the given density (the first layer dense when asked).
  absl::Status SetMagnitudeMasks(const std::vector<double>& densities);
  absl::Status ApplyMasks(const std::vector<std::vector<uint8_t>>& masks);
  std::vector<double> CandidateDensities(int candidate) const;
  absl::Status AdaptiveBnSelection(FedAvg& fed);

  core::Cnn* model_;
  PruneOptions options_;
  std::vector<Layer> layers_;                // prunable, input side first
  std::vector<std::vector<uint8_t>> masks_;  // per block (numel), 1 = keep
  int chosen_ = -1;
  std::vector<double> candidate_losses_;
  // The current adjustment.
  int adjusted_ = -1;
  int64_t k_ = 0;
  TopKHeap heap_{0};
  int64_t round_bytes_ = 0;
  int64_t adjustments_ = 0;
};

}  // namespace memtrain::federated

#endif  // MEMTRAIN_FEDERATED_PRUNING_H_
