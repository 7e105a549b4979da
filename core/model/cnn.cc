#include "core/model/cnn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/kernels/cpu/cnn_ops.h"
#include "core/kernels/cpu/ops.h"
#include "core/philox.h"

namespace memtrain::core {
namespace {

// The convolution's scratch slots: fixed (not the thread count), so its weight gradients, which
// are summed per slot, are the same on any thread count and any layout of ranks.
constexpr int64_t kConvSlots = 8;

}  // namespace

absl::Status CnnConfig::Validate() const {
  auto positive = [](const char* field, int v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat("CnnConfig::%s = %d: must be > 0", field, v));
  };
  MT_RETURN_IF_ERROR(positive("in_channels", in_channels));
  MT_RETURN_IF_ERROR(positive("height", height));
  MT_RETURN_IF_ERROR(positive("width", width));
  MT_RETURN_IF_ERROR(positive("num_classes", num_classes));
  int convs = 0, h = height, w = width;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] == kPool) {
      if (i == 0 || layers[i - 1] == kPool) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "CnnConfig::layers: a pool at position %d does not follow a conv layer; write "
            "pools after conv layers, e.g. [32, pool, 64, pool]",
            i));
      }
      h /= 2;
      w /= 2;
      if (h < 1 || w < 1) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "CnnConfig::layers: the pool at position %d leaves a %dx%d input nothing to pool; "
            "use fewer pools for %dx%d images",
            i, height, width, height, width));
      }
    } else if (layers[i] <= 0 || layers[i] > 4096) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "CnnConfig::layers[%d] = %d: output channels must be in [1, 4096]", i, layers[i]));
    } else {
      ++convs;
    }
  }
  if (convs == 0) {
    return absl::InvalidArgumentError("CnnConfig::layers has no conv layer; give at least one");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Cnn>> Cnn::Create(CnnConfig config) {
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Cnn> m(new Cnn(config));
  m->layers_ = MakeLayers(config);
  const Layer& last = m->layers_.back();
  m->features_ = last.OC * last.OH() * last.OW();
  for (size_t i = 0; i < m->layers_.size(); ++i) {
    const int64_t OC = m->layers_[i].OC, K = static_cast<int64_t>(m->layers_[i].C) * 9;
    MT_ASSIGN_OR_RETURN(ParamBlock b,
                        ParamBlock::Create(absl::StrFormat("conv%d", i), static_cast<int>(i),
                                           {{"w", {OC, K}},
                                            {"b", {OC}},
                                            {"bn_w", {OC}},
                                            {"bn_b", {OC}},
                                            {"bn_mean", {OC}, false},
                                            {"bn_var", {OC}, false}}));
    m->blocks_.push_back(std::move(b));
  }
  MT_ASSIGN_OR_RETURN(
      ParamBlock head,
      ParamBlock::Create("head", static_cast<int>(m->layers_.size()),
                         {{"w", {config.num_classes, m->features_}}, {"b", {config.num_classes}}}));
  m->blocks_.push_back(std::move(head));
  m->bn_sum_.assign(0, 0.0);
  return m;
}

std::vector<Cnn::Layer> Cnn::MakeLayers(const CnnConfig& config) {
  std::vector<Layer> layers;
  int C = config.in_channels, H = config.height, W = config.width;
  for (size_t i = 0; i < config.layers.size(); ++i) {
    if (config.layers[i] == kPool) continue;
    Layer l{.C = C, .H = H, .W = W, .OC = config.layers[i]};
    l.pool = i + 1 < config.layers.size() && config.layers[i + 1] == kPool;
    layers.push_back(l);
    C = l.OC;
    H = l.OH();
    W = l.OW();
  }
  return layers;
}

Cnn::Plan Cnn::MakePlan(const std::vector<Layer>& layers, bool train) {
  Plan plan;
  int64_t oc = 0;
  for (const Layer& l : layers) {
    plan.largest = std::max<int64_t>(plan.largest, static_cast<int64_t>(l.C) * l.H * l.W);
    plan.largest = std::max<int64_t>(plan.largest, static_cast<int64_t>(l.OC) * l.H * l.W);
    plan.scratch = std::max<int64_t>(
        plan.scratch, cpu::Conv2dScratchFloats(l.C, l.H, l.W, l.OC, 3, 1, 1, kConvSlots));
    oc = std::max<int64_t>(oc, l.OC);
  }
  const size_t sets = train ? layers.size() : std::min<size_t>(2, layers.size());
  for (size_t i = 0; i < sets; ++i) {
    // Shared sets are sized for the largest layer that uses them.
    Plan::Set set{.oc = oc};
    for (size_t j = i; j < layers.size(); j += train ? layers.size() : 2) {
      const Layer& l = layers[j];
      set.n = std::max<int64_t>(set.n, static_cast<int64_t>(l.OC) * l.H * l.W);
      set.pool = set.pool || l.pool;
    }
    plan.sets.push_back(set);
  }
  return plan;
}

absl::StatusOr<std::vector<int64_t>> Cnn::BlockNumels(const CnnConfig& config) {
  MT_RETURN_IF_ERROR(config.Validate());
  const std::vector<Layer> layers = MakeLayers(config);
  std::vector<int64_t> numels;
  for (const Layer& l : layers) numels.push_back(static_cast<int64_t>(l.OC) * l.C * 9 + 5 * l.OC);
  const Layer& last = layers.back();
  const int64_t features = static_cast<int64_t>(last.OC) * last.OH() * last.OW();
  numels.push_back(config.num_classes * features + config.num_classes);
  return numels;
}

absl::StatusOr<MemoryEstimate> Cnn::EstimateMemory(const CnnConfig& config, const PrepareOptions& o,
                                                   int64_t optimizer_bytes_per_param) {
  MT_RETURN_IF_ERROR(config.Validate());
  MT_RETURN_IF_ERROR(CheckPrepareOptions(o));
  // In 128-bit arithmetic, so an absurd B or layer count gives a huge number, not an overflow;
  // saturated to int64 at the end.
  using I = __int128;
  MT_ASSIGN_OR_RETURN(const std::vector<int64_t> numels, BlockNumels(config));
  I params = 0;
  for (int64_t n : numels) params += n;
  const bool train = IsTrainingMode(o.mode);
  const Plan plan = MakePlan(MakeLayers(config), train);
  const I B = o.B, f = sizeof(float), i32 = sizeof(int32_t);
  std::array<I, kNumMemoryTags> bytes{};
  auto at = [&](MemoryTag t) -> I& { return bytes[static_cast<int>(t)]; };
  at(MemoryTag::kParams) = params * f;            // Create
  if (train) at(MemoryTag::kGrads) = params * f;  // the first Backward
  at(MemoryTag::kOptimizer) = params * std::max<int64_t>(0, optimizer_bytes_per_param);
  // Prepare, buffer by buffer as it allocates them.
  I acts = 0;
  for (const Plan::Set& set : plan.sets) {
    acts += 2 * B * set.n * f + 2 * set.oc * f;                     // conv, bn, mean, rstd
    if (set.pool) acts += B * set.n / 4 * f + B * set.n / 4 * i32;  // pool, argmax
  }
  acts += B * config.num_classes * f + 2 * B * f + B * i32;  // logits_, losses_, lse_, labels_
  at(MemoryTag::kActivations) = acts;
  at(MemoryTag::kScratch) = std::max<int64_t>(plan.scratch, 1) * f;  // scratch_
  if (train) at(MemoryTag::kScratch) += 4 * B * plan.largest * f;    // dx_[0], dx_[1], dconv_
  MemoryEstimate out;
  constexpr I kMax = std::numeric_limits<int64_t>::max();
  for (int t = 0; t < kNumMemoryTags; ++t) {
    out.bytes[t] = static_cast<int64_t>(bytes[t] > kMax ? kMax : bytes[t]);
  }
  return out;
}

void Cnn::InitWeights(uint64_t seed) {
  for (ParamBlock& b : blocks_) {
    const auto& views = b.views();
    for (size_t vi = 0; vi < views.size(); ++vi) {
      const ParamView& v = views[vi];
      float* p = b.params().f32() + v.offset;
      const uint64_t stream = (static_cast<uint64_t>(b.id()) << 16) | vi;
      if (v.name == "w" && b.name() != "head") {
        // Kaiming normal, fan-out, ReLU gain (torchvision's VGG init).
        const double fan_out = static_cast<double>(v.shape[0]) * 9.0;
        FillNormal(absl::MakeSpan(p, v.numel), seed, stream, 0, 0.0f,
                   static_cast<float>(std::sqrt(2.0 / fan_out)));
      } else if (v.name == "w") {
        FillNormal(absl::MakeSpan(p, v.numel), seed, stream, 0, 0.0f, 0.01f);
      } else if (v.name == "bn_w" || v.name == "bn_var") {
        std::fill_n(p, v.numel, 1.0f);
      } else {
        std::fill_n(p, v.numel, 0.0f);
      }
    }
  }
}

absl::Status Cnn::CheckPrepareOptions(const PrepareOptions& o) {
  if (o.B < 1 || o.T != 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Cnn::Prepare: B = %d, T = %d; an image model takes B >= 1 images and T = 1", o.B, o.T));
  }
  if (o.mode == ModelMode::kTrainRecompute) {
    return absl::InvalidArgumentError(
        "Cnn::Prepare: recompute is not supported by the CNN (its activations are small); use "
        "ModelMode::kTrain");
  }
  if (o.mode == ModelMode::kForwardOnly && o.lanes != 1) {
    return absl::InvalidArgumentError("Cnn::Prepare: kForwardOnly with one lane only");
  }
  return absl::OkStatus();
}

absl::Status Cnn::Prepare(const PrepareOptions& o) {
  MT_RETURN_IF_ERROR(CheckPrepareOptions(o));
  acts_.clear();
  logits_ = losses_ = lse_ = scratch_ = labels_ = dconv_ = Tensor();
  dx_[0] = dx_[1] = Tensor();
  const bool train = IsTrainingMode(o.mode);
  const int64_t B = o.B;
  auto act = [&](Shape s) { return Tensor::Empty(s, DType::kF32, MemoryTag::kActivations); };
  // EstimateMemory counts these same buffers from the same plan.
  const Plan plan = MakePlan(layers_, train);
  for (const Plan::Set& set : plan.sets) {
    Acts a;
    MT_ASSIGN_OR_RETURN(a.conv, act({B * set.n}));  // (B, OC, H, W)
    MT_ASSIGN_OR_RETURN(a.bn, act({B * set.n}));    // (B, OC, H, W)
    MT_ASSIGN_OR_RETURN(a.mean, act({set.oc}));     // (OC)
    MT_ASSIGN_OR_RETURN(a.rstd, act({set.oc}));     // (OC)
    if (set.pool) {
      MT_ASSIGN_OR_RETURN(a.pool, act({B * set.n / 4}));  // (B, OC, H/2, W/2)
      MT_ASSIGN_OR_RETURN(a.argmax,
                          Tensor::Empty({B * set.n / 4}, DType::kI32, MemoryTag::kActivations));
    }
    acts_.push_back(std::move(a));
  }
  MT_ASSIGN_OR_RETURN(logits_, act({B, config_.num_classes}));
  MT_ASSIGN_OR_RETURN(losses_, act({B}));
  MT_ASSIGN_OR_RETURN(lse_, act({B}));
  MT_ASSIGN_OR_RETURN(labels_, Tensor::Empty({B}, DType::kI32, MemoryTag::kActivations));
  MT_ASSIGN_OR_RETURN(scratch_, Tensor::Empty({std::max<int64_t>(plan.scratch, 1)}, DType::kF32,
                                              MemoryTag::kScratch));
  if (train) {
    auto scr = [&](int64_t n) { return Tensor::Empty({n}, DType::kF32, MemoryTag::kScratch); };
    MT_ASSIGN_OR_RETURN(dx_[0], scr(B * plan.largest));
    MT_ASSIGN_OR_RETURN(dx_[1], scr(B * plan.largest));
    MT_ASSIGN_OR_RETURN(dconv_, scr(2 * B * plan.largest));  // two halves: pool/ReLU, then BN
  }
  prepared_ = o;
  return absl::OkStatus();
}

absl::Status Cnn::ValidateBatch(const Batch& batch) const {
  if (batch.images == nullptr || batch.T != 1 || batch.B != prepared_.B) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Cnn: the batch must hold B = %d images (T = 1, images set); it has B = %d, T = %d%s",
        prepared_.B, batch.B, batch.T, batch.images == nullptr ? ", no images" : ""));
  }
  if (batch.targets != nullptr) {
    for (int i = 0; i < batch.B; ++i) {
      if (batch.targets[i] >= config_.num_classes) {
        return absl::InvalidArgumentError(
            absl::StrFormat("Cnn: label %d of image %d is not a class (0..%d)", batch.targets[i], i,
                            config_.num_classes - 1));
      }
    }
  }
  return absl::OkStatus();
}

const float* Cnn::StageInput(int stage, const Batch& batch) const {
  if (stage == 0) return batch.images;
  return StageOutput(stage - 1);
}

float* Cnn::StageOutput(int stage) const {
  const bool train = acts_.size() == layers_.size() && IsTrainingMode(prepared_.mode);
  const Acts& a = acts_[train ? stage : stage % 2];
  return layers_[stage].pool ? a.pool.f32() : a.bn.f32();
}

absl::Status Cnn::ForwardStage(int stage, const Batch& batch, Pass pass, int lane,
                               const ExecContext& ctx) {
  const int64_t B = prepared_.B;
  const ParamBlock& blk = blocks_[stage];
  if (stage == static_cast<int>(layers_.size())) {  // the head
    const int K = config_.num_classes;
    // Tiles fixed by the shapes: the logits are the same bits on any thread count.
    cpu::MatmulForwardFixed(logits_.f32(), StageOutput(stage - 1),
                            blk.params().f32() + blk.view("w").offset,
                            blk.params().f32() + blk.view("b").offset, B, features_, K);
    valid_ = 0;
    if (batch.targets != nullptr) {
      std::memcpy(labels_.raw(), batch.targets, B * sizeof(int32_t));
      for (int64_t i = 0; i < B; ++i) valid_ += batch.targets[i] >= 0;
      cpu::CrossEntropyForward(losses_.f32(), lse_.f32(), logits_.f32(), batch.targets, B, K, K);
    } else {
      std::fill_n(labels_.i32(), B, -1);
      losses_.SetZero();
    }
    return absl::OkStatus();
  }
  const Layer& l = layers_[stage];
  const bool train_plan = IsTrainingMode(prepared_.mode);
  Acts& a = acts_[train_plan ? stage : stage % 2];
  const float* p = blk.params().f32();
  auto at = [&](const char* name) { return blk.view(name).offset; };
  const int64_t HW = static_cast<int64_t>(l.H) * l.W;
  cpu::Conv2dForward(a.conv.f32(), StageInput(stage, batch), p + at("w"), p + at("b"), B, l.C, l.H,
                     l.W, l.OC, 3, 1, 1, scratch_.f32(), kConvSlots);
  float* bn_mean = const_cast<float*>(p) + at("bn_mean");
  float* bn_var = const_cast<float*>(p) + at("bn_var");
  if (bn_stats_) {
    cpu::BatchNorm2dBatchStats(a.mean.f32(), a.rstd.f32(), a.conv.f32(), B, l.OC, HW);
    double* sum = bn_sum_.data();
    for (int s = 0; s < stage; ++s) sum += 2 * layers_[s].OC;
    for (int c = 0; c < l.OC; ++c) {
      const double m = a.mean.f32()[c], v = a.rstd.f32()[c];
      sum[c] += static_cast<double>(B) * m;
      sum[l.OC + c] += static_cast<double>(B) * (v + m * m);
    }
    if (stage == 0) bn_images_ += B;
    cpu::BatchNorm2dForwardEval(a.bn.f32(), a.conv.f32(), p + at("bn_w"), p + at("bn_b"),
                                a.mean.f32(), a.rstd.f32(), B, l.OC, HW, config_.bn_eps);
  } else if (pass == Pass::kTrainForward) {
    cpu::BatchNorm2dForwardTrain(a.bn.f32(), a.mean.f32(), a.rstd.f32(), bn_mean, bn_var,
                                 a.conv.f32(), p + at("bn_w"), p + at("bn_b"), B, l.OC, HW,
                                 config_.bn_momentum, config_.bn_eps);
  } else {
    cpu::BatchNorm2dForwardEval(a.bn.f32(), a.conv.f32(), p + at("bn_w"), p + at("bn_b"), bn_mean,
                                bn_var, B, l.OC, HW, config_.bn_eps);
  }
  cpu::ReluForward(a.bn.f32(), a.bn.f32(), B * l.OC * HW);
  if (l.pool) cpu::MaxPool2dForward(a.pool.f32(), a.argmax.i32(), a.bn.f32(), B, l.OC, l.H, l.W);
  (void)lane;
  return absl::OkStatus();
}

absl::Status Cnn::BackwardStage(int stage, const Batch& batch, float loss_scale,
                                const ExecContext& ctx) {
  const int64_t B = prepared_.B;
  ParamBlock& blk = blocks_[stage];
  float* g = blk.grads().f32();
  const float* p = blk.params().f32();
  auto at = [&](const char* name) { return blk.view(name).offset; };
  const int L = static_cast<int>(layers_.size());
  if (stage == L) {
    const int K = config_.num_classes;
    if (batch.targets == nullptr) return absl::InvalidArgumentError("Backward needs labels");
    const float dloss = valid_ > 0 ? loss_scale / static_cast<float>(valid_) : 0.0f;
    cpu::CrossEntropyBackward(logits_.f32(), logits_.f32(), lse_.f32(), labels_.i32(), dloss, B, K,
                              K);
    cpu::MatmulBackwardFixed(dx_[(L - 1) & 1].f32(), g + at("w"), g + at("b"), logits_.f32(),
                             StageOutput(L - 1), p + at("w"), B, features_, K);
    return absl::OkStatus();
  }
  const Layer& l = layers_[stage];
  const Acts& a = acts_[stage];
  const int64_t HW = static_cast<int64_t>(l.H) * l.W, n = B * l.OC * HW;
  float* dpost = dx_[stage & 1].f32();  // d(stage output)
  if (l.pool) {
    float* d = dconv_.f32();
    cpu::MaxPool2dBackward(d, dpost, a.argmax.i32(), B, l.OC, l.H, l.W);
    dpost = d;
  }
  cpu::ReluBackward(dpost, a.bn.f32(), dpost, n);
  float* dbn_in = dconv_.f32() + n;  // past the pool half
  cpu::BatchNorm2dBackward(dbn_in, g + at("bn_w"), g + at("bn_b"), dpost, a.conv.f32(),
                           p + at("bn_w"), a.mean.f32(), a.rstd.f32(), B, l.OC, HW);
  cpu::Conv2dBackward(stage > 0 ? dx_[(stage - 1) & 1].f32() : nullptr, g + at("w"), g + at("b"),
                      dbn_in, StageInput(stage, batch), p + at("w"), B, l.C, l.H, l.W, l.OC, 3, 1,
                      1, scratch_.f32(), kConvSlots);
  return absl::OkStatus();
}

double Cnn::Loss(int lane) const {
  (void)lane;
  if (valid_ == 0) return 0.0;
  double sum = 0;
  for (int64_t i = 0; i < losses_.numel(); ++i) sum += losses_.f32()[i];
  return sum / static_cast<double>(valid_);
}

int64_t Cnn::Correct() const {
  const int K = config_.num_classes;
  int64_t correct = 0;
  for (int64_t i = 0; i < prepared_.B; ++i) {
    const float* row = logits_.f32() + i * K;
    const int best = static_cast<int>(std::max_element(row, row + K) - row);
    correct += labels_.i32()[i] == best;
  }
  return correct;
}

std::vector<int64_t> Cnn::StageFlopsPerImage() const {
  std::vector<int64_t> f;
  for (const Layer& l : layers_) f.push_back(2LL * l.OC * l.C * 9 * l.H * l.W);
  f.push_back(2LL * config_.num_classes * features_);
  return f;
}

int64_t Cnn::ForwardFlopsPerImage() const {
  int64_t f = 0;
  for (const Layer& l : layers_) f += 2LL * l.OC * l.C * 9 * l.H * l.W;
  return f + 2LL * config_.num_classes * features_;
}

void Cnn::set_bn_stats(bool on) {
  bn_stats_ = on;
  if (on) {
    int64_t n = 0;
    for (const Layer& l : layers_) n += 2 * l.OC;
    bn_sum_.assign(n, 0.0);
    bn_images_ = 0;
  }
}

std::vector<double> Cnn::BnStats(int64_t* images) const {
  std::vector<double> out(bn_sum_.size());
  size_t off = 0;
  for (const Layer& l : layers_) {
    for (int c = 0; c < l.OC; ++c) {
      const double m = bn_images_ ? bn_sum_[off + c] / bn_images_ : 0.0;
      const double sq = bn_images_ ? bn_sum_[off + l.OC + c] / bn_images_ : 0.0;
      out[off + c] = m;
      out[off + l.OC + c] = std::max(0.0, sq - m * m);
    }
    off += 2 * l.OC;
  }
  if (images != nullptr) *images = bn_images_;
  return out;
}

}  // namespace memtrain::core
