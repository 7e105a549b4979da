#include "core/model/gpt2.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "core/philox.h"

namespace memtrain::core {

const char* const kGPT2LayerParams[12] = {"ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                                          "ln2w", "ln2b", "fcw",  "fcb",  "fcprojw",  "fcprojb"};

absl::Status GPT2Config::Validate() {
  auto positive = [](const char* field, int v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("GPT2Config::%s = %d: must be a positive integer", field, v));
  };
  MT_RETURN_IF_ERROR(positive("max_seq_len", max_seq_len));
  MT_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  MT_RETURN_IF_ERROR(positive("n_layer", n_layer));
  MT_RETURN_IF_ERROR(positive("n_head", n_head));
  MT_RETURN_IF_ERROR(positive("n_embd", n_embd));
  if (n_embd % n_head != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GPT2Config::n_embd = %d is not a multiple of GPT2Config::n_head = %d; pick n_embd = "
        "n_head * head_size",
        n_embd, n_head));
  }
  if (padded_vocab_size == 0) padded_vocab_size = (vocab_size + 127) / 128 * 128;
  if (padded_vocab_size < vocab_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GPT2Config::padded_vocab_size = %d is smaller than GPT2Config::vocab_size = %d",
        padded_vocab_size, vocab_size));
  }
  return absl::OkStatus();
}

std::string GPT2Config::ToString() const {
  return absl::StrFormat("GPT-2 L=%d NH=%d C=%d V=%d Vp=%d maxT=%d", n_layer, n_head, n_embd,
                         vocab_size, padded_vocab_size, max_seq_len);
}

namespace {

// The views of each kind of block. Create allocates exactly these; EstimateMemory counts them.
std::vector<ParamSpec> EmbeddingSpecs(const GPT2Config& c) {
  return {{"wte", {c.padded_vocab_size, c.n_embd}}, {"wpe", {c.max_seq_len, c.n_embd}}};
}
std::vector<ParamSpec> LayerSpecs(const GPT2Config& c) {
  const int64_t C = c.n_embd;
  return {{"ln1w", {C}},        {"ln1b", {C}},     {"qkvw", {3 * C, C}},    {"qkvb", {3 * C}},
          {"attprojw", {C, C}}, {"attprojb", {C}}, {"ln2w", {C}},           {"ln2b", {C}},
          {"fcw", {4 * C, C}},  {"fcb", {4 * C}},  {"fcprojw", {C, 4 * C}}, {"fcprojb", {C}}};
}
std::vector<ParamSpec> HeadSpecs(const GPT2Config& c) {
  return {{"lnfw", {c.n_embd}}, {"lnfb", {c.n_embd}}};
}

// The floats of one block's activations (BlockActs::flat) for micro-batches of (B, T); I is
// int64_t in Prepare and a 128-bit integer in EstimateMemory.
template <typename I>
I PerBlockActivations(I B, I T, I C, I NH) {
  const I N = B * T;
  return N * (C + 1 + 1 + 3 * C + C + C + C + 1 + 1 + 4 * C + 4 * C) + B * NH * T;
}
// The residual-stream buffers and the per-block activation buffers a mode keeps.
int64_t NumResid(ModelMode mode, int64_t L, int lanes) {
  return IsTrainingMode(mode) ? L + 1 : 2 * static_cast<int64_t>(lanes);
}
int64_t NumBlockActs(ModelMode mode, int64_t L) { return mode == ModelMode::kTrain ? L : 1; }
// Rows of the logits buffer: every position, but in a forward-only plan (only losses are kept)
// chunks of about 8M floats, so the vocabulary does not set the memory of a zeroth-order step.
template <typename I>
I LogitRows(ModelMode mode, I N, I Vp) {
  if (mode != ModelMode::kForwardOnly) return N;
  return std::min(N, std::max(I(1), I(1 << 23) / Vp));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GPT2>> GPT2::Create(GPT2Config config, Device device) {
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<GPT2> m(new GPT2(config, device));
  const int L = config.n_layer;
  MT_ASSIGN_OR_RETURN(ParamBlock emb,
                      ParamBlock::Create("embedding", 0, EmbeddingSpecs(config), device));
  m->blocks_.push_back(std::move(emb));
  const std::vector<ParamSpec> layer = LayerSpecs(config);
  for (int l = 0; l < L; ++l) {
    MT_ASSIGN_OR_RETURN(ParamBlock blk,
                        ParamBlock::Create(absl::StrFormat("h.%d", l), l + 1, layer, device));
    m->blocks_.push_back(std::move(blk));
  }
  MT_ASSIGN_OR_RETURN(ParamBlock head,
                      ParamBlock::Create("head", L + 1, HeadSpecs(config), device));
  m->blocks_.push_back(std::move(head));
  return m;
}

absl::StatusOr<GPT2::MemoryEstimate> GPT2::EstimateMemory(GPT2Config config,
                                                          const PrepareOptions& o, Device device) {
  MT_RETURN_IF_ERROR(config.Validate());
  if (o.B <= 0 || o.T <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("batch shape B=%d, T=%d: both must be positive", o.B, o.T));
  }
  if (o.T > config.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("sequence length T=%d exceeds the model's max_seq_len (maxT) = %d", o.T,
                        config.max_seq_len));
  }
  const int lanes = o.mode == ModelMode::kForwardOnly ? o.lanes : 1;
  if (lanes < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PrepareOptions::lanes = %d: a forward-only plan needs at least one lane", o.lanes));
  }
  // In 128-bit arithmetic, so absurd sizes (n_layer = 2^31 - 1) give a huge number, not an
  // overflow; saturated to int64 at the end.
  using I = __int128;
  auto numel = [](const std::vector<ParamSpec>& specs) {
    I n = 0;
    for (const ParamSpec& s : specs) {
      I e = 1;
      for (int64_t d : s.shape) e *= d;
      n += e;
    }
    return n;
  };
  const I B = o.B, T = o.T, N = B * T, C = config.n_embd, NH = config.n_head, L = config.n_layer;
  const I Vp = config.padded_vocab_size, f = sizeof(float);
  std::array<I, kNumMemoryTags> bytes{};
  auto at = [&](MemoryTag t) -> I& { return bytes[static_cast<int>(t)]; };
  // Create: params of the embedding, L transformer blocks and the head.
  const I params =
      numel(EmbeddingSpecs(config)) + L * numel(LayerSpecs(config)) + numel(HeadSpecs(config));
  at(MemoryTag::kParams) = params * f;
  const bool training = IsTrainingMode(o.mode);
  // The engine's first Backward: ParamBlock::EnsureGrads on every block.
  if (training) at(MemoryTag::kGrads) = params * f;
  // Prepare, buffer by buffer as it allocates them.
  I acts = NumResid(o.mode, config.n_layer, lanes) * N * C;                         // resid_
  acts += NumBlockActs(o.mode, config.n_layer) * PerBlockActivations(B, T, C, NH);  // acts_
  acts += N * C + N + N + LogitRows(o.mode, N, Vp) * Vp + N;  // lnf_ and stats, logits_, lse_
  acts += lanes * N;                                          // losses_
  at(MemoryTag::kActivations) = acts * f;
  if (device.type != DeviceType::kCpu) {  // dev_inputs_, dev_targets_
    at(MemoryTag::kActivations) += lanes * 2 * N * static_cast<I>(sizeof(int32_t));
  }
  // dres_[0], dres_[1], dbuf_, dqkv_, dfch_
  if (training) at(MemoryTag::kScratch) = (3 * N * C + N * 3 * C + N * 4 * C) * f;
  MemoryEstimate out;
  constexpr I kMax = std::numeric_limits<int64_t>::max();
  for (int t = 0; t < kNumMemoryTags; ++t) {
    out.bytes[t] = static_cast<int64_t>(bytes[t] > kMax ? kMax : bytes[t]);
  }
  return out;
}

int64_t GPT2::num_parameters() const {
  int64_t n = 0;
  for (const ParamBlock& b : blocks_) n += b.numel();
  return n;
}

void GPT2::InitWeights(uint64_t seed) {
  const float proj_std = 0.02f / std::sqrt(2.0f * config_.n_layer);
  const bool on_host = device_.type == DeviceType::kCpu;
  std::vector<float> staging;  // a block's values on the host when the block lives on a device
  for (ParamBlock& b : blocks_) {
    if (!on_host) staging.assign(b.numel(), 0.0f);
    float* base = on_host ? b.params().f32() : staging.data();
    const auto& views = b.views();
    for (size_t vi = 0; vi < views.size(); ++vi) {
      const ParamView& v = views[vi];
      float* p = base + v.offset;
      const std::string& n = v.name;
      if (n == "ln1w" || n == "ln2w" || n == "lnfw") {
        std::fill_n(p, v.numel, 1.0f);
      } else if (v.shape.size() == 1) {
        std::fill_n(p, v.numel, 0.0f);  // biases
      } else {
        float std = (n == "attprojw" || n == "fcprojw") ? proj_std : 0.02f;
        // One Philox stream per (block, tensor): independent of layout and thread count.
        uint64_t stream = (static_cast<uint64_t>(b.id()) << 16) | vi;
        FillNormal(absl::MakeSpan(p, v.numel), seed, stream, 0, 0.0f, std);
      }
    }
    if (!on_host) {
      be_->CopyFromHost(ExecContext::For(device_), b.params().raw(), staging.data(),
                        staging.size() * sizeof(float));
    }
  }
}

std::vector<int> GPT2::extra_blocks(int stage) const {
  if (stage == head_stage()) return {kEmbeddingStage};
  return {};
}

absl::Status GPT2::Prepare(const PrepareOptions& o) {
  const int B = o.B, T = o.T;
  if (B <= 0 || T <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("batch shape B=%d, T=%d: both must be positive", B, T));
  }
  if (T > config_.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence length T=%d exceeds the model's max_seq_len (maxT) = %d; use a shorter "
        "seq_len or a model with a larger max_seq_len",
        T, config_.max_seq_len));
  }
  const bool training = IsTrainingMode(o.mode);
  const int lanes = o.mode == ModelMode::kForwardOnly ? o.lanes : 1;
  if (lanes < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PrepareOptions::lanes = %d: a forward-only plan needs at least one lane", o.lanes));
  }
  if (B == B_ && T == T_ && o.mode == mode_ && lanes == prepared_.lanes) {
    return absl::OkStatus();
  }
  const int64_t N = static_cast<int64_t>(B) * T, C = config_.n_embd, NH = config_.n_head;
  const int64_t Vp = config_.padded_vocab_size, L = config_.n_layer;
  auto act = [&](Shape s) {
    return Tensor::Empty(s, DType::kF32, MemoryTag::kActivations, device_);
  };
  auto scratch = [&](Shape s) {
    return Tensor::Empty(s, DType::kF32, MemoryTag::kScratch, device_);
  };
  // Release the old buffers first so a re-plan does not need both at once.
  acts_.clear();
  resid_.clear();
  losses_.clear();
  lnf_ = lnf_mean_ = lnf_rstd_ = logits_ = lse_ = Tensor();
  dres_[0] = dres_[1] = dbuf_ = dqkv_ = dfch_ = Tensor();
  B_ = T_ = 0;
  prepared_ = PrepareOptions{};

  const int64_t n_resid = NumResid(o.mode, L, lanes);
  for (int64_t i = 0; i < n_resid; ++i) {
    MT_ASSIGN_OR_RETURN(Tensor r, act({B, T, C}));
    resid_.push_back(std::move(r));
  }
  const int64_t per_block = PerBlockActivations<int64_t>(B, T, C, NH);
  const int64_t n_acts = NumBlockActs(o.mode, L);
  for (int64_t l = 0; l < n_acts; ++l) {
    BlockActs a;
    MT_ASSIGN_OR_RETURN(a.flat, act({per_block}));
    float* p = a.flat.f32();
    auto take = [&p](int64_t n) {
      float* r = p;
      p += n;
      return r;
    };
    a.ln1 = take(N * C);
    a.ln1_mean = take(N);
    a.ln1_rstd = take(N);
    a.qkv = take(N * 3 * C);
    a.atty = take(N * C);
    a.att_lse = take(B * NH * T);
    a.res2 = take(N * C);
    a.ln2 = take(N * C);
    a.ln2_mean = take(N);
    a.ln2_rstd = take(N);
    a.fch = take(N * 4 * C);
    a.fch_gelu = take(N * 4 * C);
    MT_CHECK(p == a.flat.f32() + per_block);
    acts_.push_back(std::move(a));
  }
  MT_ASSIGN_OR_RETURN(lnf_, act({B, T, C}));
  MT_ASSIGN_OR_RETURN(lnf_mean_, act({B, T}));
  MT_ASSIGN_OR_RETURN(lnf_rstd_, act({B, T}));
  MT_ASSIGN_OR_RETURN(logits_, act({LogitRows<int64_t>(o.mode, N, Vp), Vp}));
  MT_ASSIGN_OR_RETURN(lse_, act({B, T}));
  for (int k = 0; k < lanes; ++k) {
    MT_ASSIGN_OR_RETURN(Tensor l, act({B, T}));
    losses_.push_back(std::move(l));
  }
  valid_targets_.assign(lanes, 0);
  dev_inputs_.clear();
  dev_targets_.clear();
  if (device_.type != DeviceType::kCpu) {
    for (int k = 0; k < lanes; ++k) {
      MT_ASSIGN_OR_RETURN(Tensor in,
                          Tensor::Empty({B, T}, DType::kI32, MemoryTag::kActivations, device_));
      MT_ASSIGN_OR_RETURN(Tensor tg,
                          Tensor::Empty({B, T}, DType::kI32, MemoryTag::kActivations, device_));
      dev_inputs_.push_back(std::move(in));
      dev_targets_.push_back(std::move(tg));
    }
  }
  if (training) {
    MT_ASSIGN_OR_RETURN(dres_[0], scratch({B, T, C}));
    MT_ASSIGN_OR_RETURN(dres_[1], scratch({B, T, C}));
    MT_ASSIGN_OR_RETURN(dbuf_, scratch({B, T, C}));
    MT_ASSIGN_OR_RETURN(dqkv_, scratch({B, T, 3 * C}));
    MT_ASSIGN_OR_RETURN(dfch_, scratch({B, T, 4 * C}));
  }
  MT_RETURN_IF_ERROR(attention_->Prepare({.B = B,
                                          .T = T,
                                          .C = C,
                                          .NH = NH,
                                          .n_layer = config_.n_layer,
                                          .mode = o.mode,
                                          .device = device_}));
  B_ = B;
  T_ = T;
  mode_ = o.mode;
  prepared_ = PrepareOptions{.B = B, .T = T, .mode = o.mode, .lanes = lanes};
  return absl::OkStatus();
}

int64_t GPT2::activation_bytes() const {
  int64_t n = lnf_.nbytes() + lnf_mean_.nbytes() + lnf_rstd_.nbytes() + logits_.nbytes() +
              lse_.nbytes() + dres_[0].nbytes() + dres_[1].nbytes() + dbuf_.nbytes() +
              dqkv_.nbytes() + dfch_.nbytes();
  for (const BlockActs& a : acts_) n += a.flat.nbytes();
  for (const Tensor& t : resid_) n += t.nbytes();
  for (const Tensor& t : losses_) n += t.nbytes();
  for (const Tensor& t : dev_inputs_) n += t.nbytes();
  for (const Tensor& t : dev_targets_) n += t.nbytes();
  return n;
}

absl::Status GPT2::ValidateBatch(const Batch& batch) const {
  if (batch.B != B_ || batch.T != T_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batch of B=%d, T=%d but the model was prepared for B=%d, T=%d; call Prepare first",
        batch.B, batch.T, B_, T_));
  }
  if (batch.pos_offset < 0 || batch.pos_offset + batch.T > config_.max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrFormat("positions %d..%d exceed max_seq_len = %d", batch.pos_offset,
                        batch.pos_offset + batch.T - 1, config_.max_seq_len));
  }
  const int64_t N = static_cast<int64_t>(batch.B) * batch.T;
  for (int64_t i = 0; i < N; ++i) {
    if (batch.inputs[i] < 0 || batch.inputs[i] >= config_.vocab_size ||
        (batch.targets && batch.targets[i] >= config_.vocab_size)) {
      int32_t bad = (batch.inputs[i] < 0 || batch.inputs[i] >= config_.vocab_size)
                        ? batch.inputs[i]
                        : batch.targets[i];
      return absl::InvalidArgumentError(absl::StrFormat(
          "token id %d at position %d is outside the model's vocabulary [0, %d); the data was "
          "tokenised for a different vocab_size",
          bad, i, config_.vocab_size));
    }
  }
  return absl::OkStatus();
}

const int32_t* GPT2::Inputs(const Batch& batch, int lane) const {
  return dev_inputs_.empty() ? batch.inputs : dev_inputs_[lane].i32();
}

const int32_t* GPT2::Targets(const Batch& batch, int lane) const {
  return dev_targets_.empty() ? batch.targets : dev_targets_[lane].i32();
}

float* GPT2::Resid(int i, int lane) const {
  return IsTrainingMode(mode_) ? resid_[i].f32() : resid_[2 * lane + (i & 1)].f32();
}

absl::Status GPT2::ForwardStage(int stage, const Batch& batch, Pass pass, int lane,
                                const ExecContext& ctx) {
  if (stage == kEmbeddingStage) {
    const ParamBlock& e = blocks_[0];
    if (!dev_inputs_.empty()) {  // the batch is on the host; the kernels read the device's copy
      const size_t bytes = static_cast<size_t>(B_) * T_ * sizeof(int32_t);
      be_->CopyFromHost(ctx, dev_inputs_[lane].raw(), batch.inputs, bytes);
      if (batch.targets != nullptr) {
        be_->CopyFromHost(ctx, dev_targets_[lane].raw(), batch.targets, bytes);
      }
    }
    be_->EmbeddingForward(ctx, Resid(0, lane), Inputs(batch, lane), e.param("wte").f32(),
                          e.param("wpe").f32(), B_, T_, config_.n_embd, batch.pos_offset);
  } else if (stage == head_stage()) {
    HeadForward(batch, lane, ctx);
  } else {
    const int layer = stage - 1;
    MT_RETURN_IF_ERROR(
        BlockForward(layer, Acts(layer), Resid(layer, lane), Resid(layer + 1, lane), ctx));
  }
  return absl::OkStatus();
}

absl::Status GPT2::BackwardStage(int stage, const Batch& batch, float loss_scale,
                                 const ExecContext& ctx) {
  if (stage == kEmbeddingStage) {
    const ParamBlock& e = blocks_[0];
    be_->EmbeddingBackward(ctx, e.grad("wte").f32(), e.grad("wpe").f32(), dres_[cur_dres_].f32(),
                           Inputs(batch, 0), B_, T_, config_.n_embd, batch.pos_offset);
  } else if (stage == head_stage()) {
    HeadBackward(batch, loss_scale, ctx);
  } else {
    MT_RETURN_IF_ERROR(BlockBackward(stage - 1, ctx));
  }
  return absl::OkStatus();
}

// out may be null: a recompute needs the block's activations, not its output.
absl::Status GPT2::BlockForward(int layer, const BlockActs& a, const float* inp, float* out,
                                const ExecContext& ctx) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& p = blocks_[layer + 1];
  be_->LayerNormForward(ctx, a.ln1, a.ln1_mean, a.ln1_rstd, inp, p.param("ln1w").f32(),
                        p.param("ln1b").f32(), N, C);
  be_->MatmulForward(ctx, a.qkv, nullptr, a.ln1, p.param("qkvw").f32(), p.param("qkvb").f32(), N, C,
                     3 * C);
  MT_RETURN_IF_ERROR(attention_->Forward(Call(layer, ctx), a.atty, a.att_lse, a.qkv));
  be_->MatmulForward(ctx, a.res2, inp, a.atty, p.param("attprojw").f32(), p.param("attprojb").f32(),
                     N, C, C);
  be_->LayerNormForward(ctx, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p.param("ln2w").f32(),
                        p.param("ln2b").f32(), N, C);
  be_->MatmulForward(ctx, a.fch, nullptr, a.ln2, p.param("fcw").f32(), p.param("fcb").f32(), N, C,
                     4 * C);
  be_->GeluForward(ctx, a.fch_gelu, a.fch, N * 4 * C);
  if (out != nullptr) {
    be_->MatmulForward(ctx, out, a.res2, a.fch_gelu, p.param("fcprojw").f32(),
                       p.param("fcprojb").f32(), N, 4 * C, C);
  }
  return absl::OkStatus();
}

absl::Status GPT2::BlockBackward(int layer, const ExecContext& ctx) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& p = blocks_[layer + 1];
  const BlockActs& a = Acts(layer);
  const float* inp = Resid(layer, 0);
  if (mode_ == ModelMode::kTrainRecompute) {
    // Activation checkpointing: the same kernels on the same input give the same activations.
    MT_RETURN_IF_ERROR(BlockForward(layer, a, inp, nullptr, ctx));
  }
  const float* dout = dres_[cur_dres_].f32();  // d(block output) (B, T, C)
  float* dres = dres_[1 - cur_dres_].f32();    // becomes d(block input)
  float* dbuf = dbuf_.f32();
  float* dfch = dfch_.f32();
  // MLP branch: out = res2 + fcproj(gelu(fc(ln2(res2)))).
  be_->MatmulBackward(ctx, dfch, p.grad("fcprojw").f32(), p.grad("fcprojb").f32(), dout, a.fch_gelu,
                      p.param("fcprojw").f32(), N, 4 * C, C);
  be_->GeluBackward(ctx, dfch, a.fch, dfch, N * 4 * C);
  be_->MatmulBackward(ctx, dbuf, p.grad("fcw").f32(), p.grad("fcb").f32(), dfch, a.ln2,
                      p.param("fcw").f32(), N, C, 4 * C);
  // The residual path passes dout through.
  be_->Copy(ctx, dres, dout, N * C * sizeof(float));
  be_->LayerNormBackward(ctx, dres, p.grad("ln2w").f32(), p.grad("ln2b").f32(), dbuf, a.res2,
                         p.param("ln2w").f32(), a.ln2_mean, a.ln2_rstd, N, C);
  // Attention branch: res2 = inp + attproj(attention(qkv(ln1(inp)))); dres now holds d(res2).
  be_->MatmulBackward(ctx, dbuf, p.grad("attprojw").f32(), p.grad("attprojb").f32(), dres, a.atty,
                      p.param("attprojw").f32(), N, C, C);
  MT_RETURN_IF_ERROR(
      attention_->Backward(Call(layer, ctx), dqkv_.f32(), dbuf, a.qkv, a.atty, a.att_lse));
  be_->MatmulBackward(ctx, dbuf, p.grad("qkvw").f32(), p.grad("qkvb").f32(), dqkv_.f32(), a.ln1,
                      p.param("qkvw").f32(), N, C, 3 * C);
  be_->LayerNormBackward(ctx, dres, p.grad("ln1w").f32(), p.grad("ln1b").f32(), dbuf, inp,
                         p.param("ln1w").f32(), a.ln1_mean, a.ln1_rstd, N, C);
  cur_dres_ = 1 - cur_dres_;
  return absl::OkStatus();
}

void GPT2::HeadForward(const Batch& batch, int lane, const ExecContext& ctx) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& h = blocks_[head_stage()];
  const float* x = Resid(config_.n_layer, lane);
  be_->LayerNormForward(ctx, lnf_.f32(), lnf_mean_.f32(), lnf_rstd_.f32(), x, h.param("lnfw").f32(),
                        h.param("lnfb").f32(), N, C);
  const int64_t Vp = config_.padded_vocab_size;
  valid_targets_[lane] = 0;
  // The logits of a forward-only pass go row chunk by row chunk (only the losses are kept).
  const int64_t rows = logits_.shape()[0];
  for (int64_t r = 0; r < N; r += rows) {
    const int64_t n = std::min(rows, N - r);
    be_->MatmulForward(ctx, logits_.f32(), nullptr, lnf_.f32() + r * C,
                       blocks_[0].param("wte").f32(), nullptr, n, C, Vp);
    if (batch.targets == nullptr) continue;
    be_->CrossEntropyForward(ctx, losses_[lane].f32() + r, lse_.f32() + r, logits_.f32(),
                             Targets(batch, lane) + r, n, config_.vocab_size, Vp);
  }
  if (batch.targets == nullptr) return;
  // The targets live on the host: counting them needs no device read.
  int valid = 0;
  for (int64_t i = 0; i < N; ++i) valid += batch.targets[i] >= 0;
  valid_targets_[lane] = valid;
}

double GPT2::Loss(int lane) const {
  MT_CHECK(lane >= 0 && lane < static_cast<int>(losses_.size()))
      << "Loss(" << lane << ") but the model was prepared with " << losses_.size() << " lane(s)";
  const int valid = valid_targets_[lane];
  if (valid == 0) return 0.0;
  // Ignored positions hold 0, so the sum over all positions is the sum over the valid ones.
  return be_->Sum(ExecContext::For(device_), losses_[lane].f32(), losses_[lane].numel()) / valid;
}

void GPT2::HeadBackward(const Batch& batch, float loss_scale, const ExecContext& ctx) {
  MT_CHECK(batch.targets != nullptr) << "Backward needs targets";
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const int64_t Vp = config_.padded_vocab_size;
  const ParamBlock& h = blocks_[head_stage()];
  const float dloss = valid_targets_[0] ? loss_scale / valid_targets_[0] : 0.0f;
  float* dlogits = logits_.f32();  // in place: the logits are not needed any more
  be_->CrossEntropyBackward(ctx, dlogits, logits_.f32(), lse_.f32(), Targets(batch, 0), dloss, N,
                            config_.vocab_size, Vp);
  be_->MatmulBackward(ctx, dbuf_.f32(), blocks_[0].grad("wte").f32(), nullptr, dlogits, lnf_.f32(),
                      blocks_[0].param("wte").f32(), N, C, Vp);
  cur_dres_ = 0;
  be_->SetZero(ctx, dres_[0].raw(), dres_[0].nbytes());
  be_->LayerNormBackward(ctx, dres_[0].f32(), h.grad("lnfw").f32(), h.grad("lnfb").f32(),
                         dbuf_.f32(), Resid(config_.n_layer, 0), h.param("lnfw").f32(),
                         lnf_mean_.f32(), lnf_rstd_.f32(), N, C);
}

}  // namespace memtrain::core
