#include "federated/pruning.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "absl/strings/str_format.h"
#include "core/philox.h"

namespace memtrain::federated {
namespace {

// Heap order: a is "smaller" (evicted first) when |a| < |b|, or equal and its index is larger.
bool Less(const std::pair<int64_t, float>& a, const std::pair<int64_t, float>& b) {
  const float x = std::abs(a.second), y = std::abs(b.second);
  if (x != y) return x < y;
  return a.first > b.first;
}

// The positions of the `keep` largest |w| (ties: the lower index), as a 0/1 mask.
std::vector<uint8_t> TopMagnitude(const float* w, int64_t n, int64_t keep) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  keep = std::clamp<int64_t>(keep, 0, n);
  std::nth_element(idx.begin(), idx.begin() + keep, idx.end(), [&](int64_t a, int64_t b) {
    const float x = std::abs(w[a]), y = std::abs(w[b]);
    return x != y ? x > y : a < b;
  });
  std::vector<uint8_t> m(n, 0);
  for (int64_t i = 0; i < keep; ++i) m[idx[i]] = 1;
  return m;
}

constexpr uint64_t kCandidateStream = 7ULL << 56;
constexpr uint64_t kBnStatsTag = 1, kCandidateLossTag = 2;

}  // namespace

absl::Status PruneOptions::Validate() const {
  if (!(density > 0.0 && density <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PruneOptions::density = %g: must be in (0, 1] (the fraction of weights kept)", density));
  }
  if (candidates < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("PruneOptions::candidates = %d: must be >= 1", candidates));
  }
  if (bn_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("PruneOptions::bn_batches = %d: must be >= 1", bn_batches));
  }
  if (adjust_rounds < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("PruneOptions::adjust_rounds = %d: must be >= 0", adjust_rounds));
  }
  if (!(initial_rate >= 0.0 && initial_rate <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PruneOptions::initial_rate = %g: must be in [0, 1] (the share of a layer's nonzeros "
        "revised in the first adjustment)",
        initial_rate));
  }
  return absl::OkStatus();
}

// ---- TopKHeap -----------------------------------------------------------------------------------

void TopKHeap::Clear() {
  heap_.clear();
  where_.clear();
}

void TopKHeap::SiftUp(size_t i) {
  while (i > 0) {
    const size_t parent = (i - 1) / 2;
    if (!Less(heap_[i], heap_[parent])) break;
    std::swap(heap_[i], heap_[parent]);
    where_[heap_[i].first] = i;
    where_[heap_[parent].first] = parent;
    i = parent;
  }
}

void TopKHeap::SiftDown(size_t i) {
  for (;;) {
    size_t m = i;
    const size_t l = 2 * i + 1, r = 2 * i + 2;
    if (l < heap_.size() && Less(heap_[l], heap_[m])) m = l;
    if (r < heap_.size() && Less(heap_[r], heap_[m])) m = r;
    if (m == i) return;
    std::swap(heap_[i], heap_[m]);
    where_[heap_[i].first] = i;
    where_[heap_[m].first] = m;
    i = m;
  }
}

void TopKHeap::Push(int64_t index, float value) {
  if (k_ <= 0) return;
  auto it = where_.find(index);
  if (it != where_.end()) {  // accumulate: the entry may move either way
    const size_t i = it->second;
    heap_[i].second += value;
    SiftUp(i);
    SiftDown(where_[index]);
    return;
  }
  const std::pair<int64_t, float> e{index, value};
  if (static_cast<int64_t>(heap_.size()) < k_) {
    heap_.push_back(e);
    where_[index] = heap_.size() - 1;
    SiftUp(heap_.size() - 1);
  } else if (Less(heap_[0], e)) {
    where_.erase(heap_[0].first);
    heap_[0] = e;
    where_[index] = 0;
    SiftDown(0);
  }
}

std::vector<std::pair<int64_t, float>> TopKHeap::Sorted() const {
  std::vector<std::pair<int64_t, float>> out = heap_;
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return Less(b, a); });
  return out;
}

// ---- Pruner -------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Pruner>> Pruner::Create(core::Cnn* model, PruneOptions options) {
  MT_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<Pruner> p(new Pruner(model, options));
  for (int s = 0; s < model->num_stages(); ++s) {
    core::ParamBlock& b = model->block(s);
    p->masks_.emplace_back(b.numel(), 1);
    if (b.has_view("w")) {
      p->layers_.push_back({.stage = s, .offset = b.view("w").offset, .numel = b.view("w").numel});
    }
  }
  return p;
}

absl::Status Pruner::ApplyMasks(const std::vector<std::vector<uint8_t>>& masks) {
  masks_ = masks;
  for (int s = 0; s < model_->num_stages(); ++s) {
    core::ParamBlock& b = model_->block(s);
    if (std::all_of(masks_[s].begin(), masks_[s].end(), [](uint8_t v) { return v == 1; })) {
      b.ClearMask();
      continue;
    }
    MT_ASSIGN_OR_RETURN(core::Tensor m, core::Tensor::Empty({b.numel()}, core::DType::kU8,
                                                            core::MemoryTag::kOther));
    std::copy(masks_[s].begin(), masks_[s].end(), static_cast<uint8_t*>(m.raw()));
    MT_RETURN_IF_ERROR(b.SetMask(m));
  }
  return absl::OkStatus();
}

absl::Status Pruner::SetMagnitudeMasks(const std::vector<double>& densities) {
  std::vector<std::vector<uint8_t>> masks;
  for (int s = 0; s < model_->num_stages(); ++s) masks.emplace_back(model_->block(s).numel(), 1);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    const float* w = model_->block(L.stage).params().f32() + L.offset;
    const int64_t keep = std::max<int64_t>(1, std::llround(densities[l] * L.numel));
    const std::vector<uint8_t> m = TopMagnitude(w, L.numel, keep);
    std::copy(m.begin(), m.end(), masks[L.stage].begin() + L.offset);
  }
  return ApplyMasks(masks);
}

// Candidate 0: the first layer dense and the others at one density, so that the kept weights
// are `density` of all prunable ones. Candidate j > 0: each other layer's density scaled by a
// factor in [0.5, 1.5] drawn from (seed, j, layer), then all rescaled to the same total.
std::vector<double> Pruner::CandidateDensities(int candidate) const {
  const size_t n = layers_.size();
  std::vector<double> d(n, 1.0);
  if (n <= 1) {
    if (n == 1) d[0] = options_.density;
    return d;
  }
  int64_t total = 0;
  for (const Layer& L : layers_) total += L.numel;
  const double rest = static_cast<double>(total - layers_[0].numel);
  const double want = std::max(0.0, options_.density * total - layers_[0].numel);
  std::vector<double> f(n, 1.0);
  for (size_t l = 1; l < n; ++l) {
    if (candidate > 0) {
      f[l] = 0.5 + core::PhiloxUniform(options_.seed, kCandidateStream | candidate, l);
    }
  }
  double weighted = 0;
  for (size_t l = 1; l < n; ++l) weighted += f[l] * layers_[l].numel;
  const double base = rest > 0 ? want / rest : 1.0;
  for (size_t l = 1; l < n; ++l) {
    d[l] = std::clamp(base * f[l] * rest / weighted, 1.0 / layers_[l].numel, 1.0);
  }
  return d;
}

absl::Status Pruner::AdaptiveBnSelection(FedAvg& fed) {
  // The dense weights, restored between candidates.
  std::vector<std::vector<float>> dense;
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    dense.emplace_back(b.params().f32(), b.params().f32() + b.numel());
  }
  auto restore = [&] {
    for (int s = 0; s < model_->num_stages(); ++s) {
      model_->block(s).ClearMask();
      std::copy(dense[s].begin(), dense[s].end(), model_->block(s).params().f32());
    }
  };
  // Every BN layer's running mean and variance from `stats` (per layer: mean, then var).
  auto write_stats = [&](const std::vector<double>& stats) {
    int64_t off = 0;
    for (int s = 0; s < model_->num_stages(); ++s) {
      core::ParamBlock& b = model_->block(s);
      if (!b.has_view("bn_mean")) continue;
      const int64_t C = b.view("bn_mean").numel;
      float* mean = b.params().f32() + b.view("bn_mean").offset;
      float* var = b.params().f32() + b.view("bn_var").offset;
      for (int64_t c = 0; c < C; ++c) {
        mean[c] = static_cast<float>(stats[off + c]);
        var[c] = static_cast<float>(stats[off + C + c]);
      }
      off += 2 * C;
    }
  };
  int64_t bn = 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    if (model_->block(s).has_view("bn_mean")) bn += 2 * model_->block(s).view("bn_mean").numel;
  }
  core::Engine& engine = fed.engine();
  std::vector<std::vector<double>> stats_of(options_.candidates);
  candidate_losses_.assign(options_.candidates, 0.0);
  for (int j = 0; j < options_.candidates; ++j) {
    MT_RETURN_IF_ERROR(SetMagnitudeMasks(CandidateDensities(j)));
    // 1. The clients recompute BN statistics forward-only under the candidate mask.
    MT_ASSIGN_OR_RETURN(
        FedAvg::Mapped stats,
        fed.MapClients(
            0, bn + 1, [&](int client, core::Cnn& m) -> absl::StatusOr<std::vector<double>> {
              m.set_bn_stats(true);
              absl::Status st = fed.ClientBatches(
                  client, kBnStatsTag, options_.bn_batches, [&](const core::Batch& batch) {
                    return engine.Forward(batch, core::Pass::kEvalForward);
                  });
              int64_t images = 0;
              std::vector<double> out = m.BnStats(&images);
              m.set_bn_stats(false);
              MT_RETURN_IF_ERROR(st);
              out.push_back(static_cast<double>(images));
              return out;
            }));
    // 2. The server averages them, weighted by the images each client used.
    std::vector<double> mean_sq(bn, 0.0);
    double images = 0;
    for (const std::vector<double>& r : stats.results) images += r[bn];
    std::vector<double>& avg = stats_of[j];
    avg.assign(bn, 0.0);
    for (const std::vector<double>& r : stats.results) {
      const double w = images > 0 ? r[bn] / images : 0.0;
      int64_t off = 0;
      for (int s = 0; s < model_->num_stages(); ++s) {
        const core::ParamBlock& b = model_->block(s);
        if (!b.has_view("bn_mean")) continue;
        const int64_t C = b.view("bn_mean").numel;
        for (int64_t c = 0; c < C; ++c) {
          const double m = r[off + c], v = r[off + C + c];
          avg[off + c] += w * m;
          mean_sq[off + c] += w * (v + m * m);
        }
        off += 2 * C;
      }
    }
    {
      int64_t off = 0;  // the variances from E[x^2] - mean^2
      for (int s = 0; s < model_->num_stages(); ++s) {
        const core::ParamBlock& b = model_->block(s);
        if (!b.has_view("bn_mean")) continue;
        const int64_t C = b.view("bn_mean").numel;
        for (int64_t c = 0; c < C; ++c) {
          avg[off + C + c] = std::max(0.0, mean_sq[off + c] - avg[off + c] * avg[off + c]);
        }
        off += 2 * C;
      }
    }
    write_stats(avg);
    // 3. The clients evaluate the candidate with those statistics.
    MT_ASSIGN_OR_RETURN(
        FedAvg::Mapped losses,
        fed.MapClients(0, 2, [&](int client, core::Cnn&) -> absl::StatusOr<std::vector<double>> {
          double sum = 0, count = 0;
          MT_RETURN_IF_ERROR(fed.ClientBatches(
              client, kCandidateLossTag, options_.bn_batches, [&](const core::Batch& batch) {
                MT_RETURN_IF_ERROR(engine.Forward(batch, core::Pass::kEvalForward));
                sum += engine.Loss() * batch.B;
                count += batch.B;
                return absl::OkStatus();
              }));
          return std::vector<double>{sum, count};
        }));
    double sum = 0, count = 0;
    for (const std::vector<double>& r : losses.results) {
      sum += r[0];
      count += r[1];
    }
    candidate_losses_[j] = count > 0 ? sum / count : 0.0;
    restore();
  }
  chosen_ = static_cast<int>(std::min_element(candidate_losses_.begin(), candidate_losses_.end()) -
                             candidate_losses_.begin());
  // The winner: its mask and its averaged statistics.
  MT_RETURN_IF_ERROR(SetMagnitudeMasks(CandidateDensities(chosen_)));
  write_stats(stats_of[chosen_]);
  return absl::OkStatus();
}

absl::Status Pruner::Start(FedAvg& fed) {
  switch (options_.method) {
    case PruneMethod::kNone:
      return absl::OkStatus();
    case PruneMethod::kOneShot:
      return SetMagnitudeMasks(CandidateDensities(0));
    case PruneMethod::kFedTiny:
      return AdaptiveBnSelection(fed);
  }
  return absl::OkStatus();
}

absl::Status Pruner::BeforeRound(FedAvg& fed, int64_t round) {
  adjusted_ = -1;
  k_ = 0;
  round_bytes_ = 0;
  fed.set_plugin(nullptr);
  if (options_.method != PruneMethod::kFedTiny || round >= options_.adjust_rounds ||
      layers_.size() < 2) {
    return absl::OkStatus();
  }
  // Output side first; the first layer stays dense.
  const int64_t revisable = static_cast<int64_t>(layers_.size()) - 1;
  const int l = static_cast<int>(layers_.size() - 1 - round % revisable);
  const Layer& L = layers_[l];
  const double rate = options_.initial_rate * 0.5 *
                      (1.0 + std::cos(M_PI * static_cast<double>(round) / options_.adjust_rounds));
  const std::vector<uint8_t>& m = masks_[L.stage];
  const int64_t nnz = std::count(m.begin() + L.offset, m.begin() + L.offset + L.numel, 1);
  const int64_t k = std::min<int64_t>(static_cast<int64_t>(std::ceil(rate * nnz)), L.numel - nnz);
  if (k <= 0) return absl::OkStatus();
  adjusted_ = l;
  k_ = k;
  heap_ = TopKHeap(k);
  fed.set_plugin(this);
  return absl::OkStatus();
}

absl::Status Pruner::AfterRound(FedAvg& fed, int64_t) {
  fed.set_plugin(nullptr);
  return absl::OkStatus();
}

void Pruner::BeginClient(int) { heap_.Clear(); }

void Pruner::AfterBackward(int, core::Cnn& model) {
  if (adjusted_ < 0) return;
  const Layer& L = layers_[adjusted_];
  const float* g = model.block(L.stage).grads().f32() + L.offset;
  const uint8_t* m = masks_[L.stage].data() + L.offset;
  for (int64_t i = 0; i < L.numel; ++i) {
    if (m[i] == 0) heap_.Push(i, g[i]);
  }
}

std::vector<double> Pruner::EndClient(int) {
  std::vector<double> out(2 * k_, 0.0);
  const std::vector<std::pair<int64_t, float>> top = heap_.Sorted();
  for (int64_t i = 0; i < k_; ++i) {
    out[2 * i] = i < static_cast<int64_t>(top.size()) ? static_cast<double>(top[i].first) : -1.0;
    out[2 * i + 1] = i < static_cast<int64_t>(top.size()) ? top[i].second : 0.0;
  }
  return out;
}

absl::Status Pruner::Aggregate(const std::vector<std::vector<double>>& messages,
                               const std::vector<int>&, const std::vector<double>&) {
  if (adjusted_ < 0) return absl::OkStatus();
  const Layer& L = layers_[adjusted_];
  // The server sums the clients' (index, value) pairs (ordered map: a fixed order).
  std::map<int64_t, double> sum;
  round_bytes_ = 0;
  for (const std::vector<double>& msg : messages) {
    for (int64_t i = 0; i < k_; ++i) {
      if (msg[2 * i] < 0) continue;
      sum[static_cast<int64_t>(msg[2 * i])] += msg[2 * i + 1];
      round_bytes_ += 8;
    }
  }
  std::vector<std::pair<int64_t, double>> grow(sum.begin(), sum.end());
  std::sort(grow.begin(), grow.end(), [](const auto& a, const auto& b) {
    const double x = std::abs(a.second), y = std::abs(b.second);
    return x != y ? x > y : a.first < b.first;
  });
  const int64_t k = std::min<int64_t>(k_, static_cast<int64_t>(grow.size()));
  // Prune the k smallest active weights of the layer (ties: the higher index first).
  std::vector<std::vector<uint8_t>> masks = masks_;
  uint8_t* m = masks[L.stage].data() + L.offset;
  const float* w = model_->block(L.stage).params().f32() + L.offset;
  std::vector<int64_t> active;
  for (int64_t i = 0; i < L.numel; ++i) {
    if (m[i]) active.push_back(i);
  }
  const int64_t drop = std::min<int64_t>(k, static_cast<int64_t>(active.size()) - 1);
  std::nth_element(active.begin(), active.begin() + drop, active.end(), [&](int64_t a, int64_t b) {
    const float x = std::abs(w[a]), y = std::abs(w[b]);
    return x != y ? x < y : a > b;
  });
  for (int64_t i = 0; i < drop; ++i) m[active[i]] = 0;
  // Grow the k largest aggregated gradients (they were pruned: their weights are 0).
  for (int64_t i = 0; i < drop; ++i) m[grow[i].first] = 1;
  ++adjustments_;
  return ApplyMasks(masks);
}

void Pruner::SyncFromModel() {
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    if (b.has_mask()) {
      const uint8_t* m = static_cast<const uint8_t*>(b.mask().raw());
      masks_[s].assign(m, m + b.numel());
    } else {
      masks_[s].assign(b.numel(), 1);
    }
  }
}

std::vector<std::pair<std::string, double>> Pruner::Densities() const {
  std::vector<std::pair<std::string, double>> out;
  for (const Layer& L : layers_) {
    const std::vector<uint8_t>& m = masks_[L.stage];
    const int64_t kept = std::count(m.begin() + L.offset, m.begin() + L.offset + L.numel, 1);
    out.emplace_back(model_->block(L.stage).name() + ".w",
                     static_cast<double>(kept) / static_cast<double>(L.numel));
  }
  return out;
}

double Pruner::density() const {
  int64_t kept = 0, total = 0;
  for (const Layer& L : layers_) {
    const std::vector<uint8_t>& m = masks_[L.stage];
    kept += std::count(m.begin() + L.offset, m.begin() + L.offset + L.numel, 1);
    total += L.numel;
  }
  return total > 0 ? static_cast<double>(kept) / total : 1.0;
}

}  // namespace memtrain::federated
