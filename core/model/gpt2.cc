#include "core/model/gpt2.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/kernels/cpu/ops.h"
#include "core/philox.h"

namespace memtrain::core {

const char* const kGPT2LayerParams[12] = {"ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
                                          "ln2w", "ln2b", "fcw",  "fcb",  "fcprojw",  "fcprojb"};

absl::Status GPT2Config::Validate() {
  auto positive = [](const char* field, int v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrFormat("model.gpt.%s = %d: must be a positive integer", field, v));
  };
  MT_RETURN_IF_ERROR(positive("max_seq_len", max_seq_len));
  MT_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  MT_RETURN_IF_ERROR(positive("n_layer", n_layer));
  MT_RETURN_IF_ERROR(positive("n_head", n_head));
  MT_RETURN_IF_ERROR(positive("n_embd", n_embd));
  if (n_embd % n_head != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.gpt.n_embd = %d is not a multiple of model.gpt.n_head = %d; pick n_embd = "
        "n_head * head_size",
        n_embd, n_head));
  }
  if (padded_vocab_size == 0) padded_vocab_size = (vocab_size + 127) / 128 * 128;
  if (padded_vocab_size < vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model.gpt.padded_vocab_size = %d is smaller than vocab_size = %d",
                        padded_vocab_size, vocab_size));
  }
  return absl::OkStatus();
}

std::string GPT2Config::ToString() const {
  return absl::StrFormat("GPT-2 L=%d NH=%d C=%d V=%d Vp=%d maxT=%d", n_layer, n_head, n_embd,
                         vocab_size, padded_vocab_size, max_seq_len);
}

absl::StatusOr<std::unique_ptr<GPT2>> GPT2::Create(GPT2Config config, Device device) {
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<GPT2> m(new GPT2(config, device));
  const int64_t C = config.n_embd, L = config.n_layer;
  MT_ASSIGN_OR_RETURN(ParamBlock emb, ParamBlock::Create("embedding", 0,
                                                         {{"wte", {config.padded_vocab_size, C}},
                                                          {"wpe", {config.max_seq_len, C}}},
                                                         device));
  m->blocks_.push_back(std::move(emb));
  for (int l = 0; l < L; ++l) {
    MT_ASSIGN_OR_RETURN(ParamBlock blk, ParamBlock::Create(absl::StrFormat("h.%d", l), l + 1,
                                                           {{"ln1w", {C}},
                                                            {"ln1b", {C}},
                                                            {"qkvw", {3 * C, C}},
                                                            {"qkvb", {3 * C}},
                                                            {"attprojw", {C, C}},
                                                            {"attprojb", {C}},
                                                            {"ln2w", {C}},
                                                            {"ln2b", {C}},
                                                            {"fcw", {4 * C, C}},
                                                            {"fcb", {4 * C}},
                                                            {"fcprojw", {C, 4 * C}},
                                                            {"fcprojb", {C}}},
                                                           device));
    m->blocks_.push_back(std::move(blk));
  }
  MT_ASSIGN_OR_RETURN(ParamBlock head,
                      ParamBlock::Create("head", L + 1, {{"lnfw", {C}}, {"lnfb", {C}}}, device));
  m->blocks_.push_back(std::move(head));
  return m;
}

int64_t GPT2::num_parameters() const {
  int64_t n = 0;
  for (const ParamBlock& b : blocks_) n += b.numel();
  return n;
}

void GPT2::InitWeights(uint64_t seed) {
  const float proj_std = 0.02f / std::sqrt(2.0f * config_.n_layer);
  for (ParamBlock& b : blocks_) {
    const auto& views = b.views();
    for (size_t vi = 0; vi < views.size(); ++vi) {
      const ParamView& v = views[vi];
      float* p = b.params().f32() + v.offset;
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
  }
}

std::vector<int> GPT2::extra_blocks(int stage) const {
  if (stage == head_stage()) return {kEmbeddingStage};
  return {};
}

absl::Status GPT2::Prepare(int B, int T) {
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
  if (B == B_ && T == T_) return absl::OkStatus();
  const int64_t N = static_cast<int64_t>(B) * T, C = config_.n_embd, NH = config_.n_head;
  const int64_t Vp = config_.padded_vocab_size;
  auto act = [&](Shape s) {
    return Tensor::Empty(s, DType::kF32, MemoryTag::kActivations, device_);
  };
  auto scratch = [&](Shape s) {
    return Tensor::Empty(s, DType::kF32, MemoryTag::kScratch, device_);
  };
  // Release the old buffers first so a resize does not need both at once.
  acts_.clear();
  B_ = T_ = 0;
  MT_ASSIGN_OR_RETURN(emb_out_, act({B, T, C}));
  const int64_t per_block = N * (C + 1 + 1 + 3 * C + C + C + 1 + 1 + 4 * C + 4 * C + C) +
                            static_cast<int64_t>(B) * NH * T + N * C;
  for (int l = 0; l < config_.n_layer; ++l) {
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
    a.out = take(N * C);
    MT_CHECK(p == a.flat.f32() + per_block);
    acts_.push_back(std::move(a));
  }
  MT_ASSIGN_OR_RETURN(lnf_, act({B, T, C}));
  MT_ASSIGN_OR_RETURN(lnf_mean_, act({B, T}));
  MT_ASSIGN_OR_RETURN(lnf_rstd_, act({B, T}));
  MT_ASSIGN_OR_RETURN(logits_, act({B, T, Vp}));
  MT_ASSIGN_OR_RETURN(losses_, act({B, T}));
  MT_ASSIGN_OR_RETURN(lse_, act({B, T}));
  MT_ASSIGN_OR_RETURN(dres_[0], scratch({B, T, C}));
  MT_ASSIGN_OR_RETURN(dres_[1], scratch({B, T, C}));
  MT_ASSIGN_OR_RETURN(dbuf_, scratch({B, T, C}));
  MT_ASSIGN_OR_RETURN(dqkv_, scratch({B, T, 3 * C}));
  MT_ASSIGN_OR_RETURN(dfch_, scratch({B, T, 4 * C}));
  B_ = B;
  T_ = T;
  return absl::OkStatus();
}

int64_t GPT2::activation_bytes() const {
  int64_t n = emb_out_.nbytes() + lnf_.nbytes() + lnf_mean_.nbytes() + lnf_rstd_.nbytes() +
              logits_.nbytes() + losses_.nbytes() + lse_.nbytes() + dres_[0].nbytes() +
              dres_[1].nbytes() + dbuf_.nbytes() + dqkv_.nbytes() + dfch_.nbytes();
  for (const BlockActs& a : acts_) n += a.flat.nbytes();
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

const float* GPT2::StageInput(int stage) const {
  return stage == 1 ? emb_out_.f32() : acts_[stage - 2].out;
}

void GPT2::ForwardStage(int stage, const Batch& batch) {
  if (stage == kEmbeddingStage) {
    const ParamBlock& e = blocks_[0];
    cpu::EmbeddingForward(emb_out_.f32(), batch.inputs, e.param("wte").f32(), e.param("wpe").f32(),
                          B_, T_, config_.n_embd, batch.pos_offset);
  } else if (stage == head_stage()) {
    HeadForward(batch);
  } else {
    BlockForward(stage - 1, batch);
  }
}

void GPT2::BackwardStage(int stage, const Batch& batch, float loss_scale) {
  if (stage == kEmbeddingStage) {
    const ParamBlock& e = blocks_[0];
    cpu::EmbeddingBackward(e.grad("wte").f32(), e.grad("wpe").f32(), dres_[cur_dres_].f32(),
                           batch.inputs, B_, T_, config_.n_embd, batch.pos_offset);
  } else if (stage == head_stage()) {
    HeadBackward(batch, loss_scale);
  } else {
    BlockBackward(stage - 1, batch);
  }
}

void GPT2::BlockForward(int layer, const Batch& batch) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& p = blocks_[layer + 1];
  BlockActs& a = acts_[layer];
  const float* inp = StageInput(layer + 1);  // (B, T, C)
  cpu::LayerNormForward(a.ln1, a.ln1_mean, a.ln1_rstd, inp, p.param("ln1w").f32(),
                        p.param("ln1b").f32(), N, C);
  cpu::MatmulForward(a.qkv, nullptr, a.ln1, p.param("qkvw").f32(), p.param("qkvb").f32(), N, C,
                     3 * C);
  attention_->Forward(a.atty, a.att_lse, a.qkv, B_, T_, C, config_.n_head);
  cpu::MatmulForward(a.res2, inp, a.atty, p.param("attprojw").f32(), p.param("attprojb").f32(), N,
                     C, C);
  cpu::LayerNormForward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, p.param("ln2w").f32(),
                        p.param("ln2b").f32(), N, C);
  cpu::MatmulForward(a.fch, nullptr, a.ln2, p.param("fcw").f32(), p.param("fcb").f32(), N, C,
                     4 * C);
  cpu::GeluForward(a.fch_gelu, a.fch, N * 4 * C);
  cpu::MatmulForward(a.out, a.res2, a.fch_gelu, p.param("fcprojw").f32(), p.param("fcprojb").f32(),
                     N, 4 * C, C);
}

void GPT2::BlockBackward(int layer, const Batch& batch) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& p = blocks_[layer + 1];
  const BlockActs& a = acts_[layer];
  const float* inp = StageInput(layer + 1);
  const float* dout = dres_[cur_dres_].f32();  // d(block output) (B, T, C)
  float* dres = dres_[1 - cur_dres_].f32();    // becomes d(block input)
  float* dbuf = dbuf_.f32();
  float* dfch = dfch_.f32();
  // MLP branch: out = res2 + fcproj(gelu(fc(ln2(res2)))).
  cpu::MatmulBackward(dfch, p.grad("fcprojw").f32(), p.grad("fcprojb").f32(), dout, a.fch_gelu,
                      p.param("fcprojw").f32(), N, 4 * C, C);
  cpu::GeluBackward(dfch, a.fch, dfch, N * 4 * C);
  cpu::MatmulBackward(dbuf, p.grad("fcw").f32(), p.grad("fcb").f32(), dfch, a.ln2,
                      p.param("fcw").f32(), N, C, 4 * C);
  std::memcpy(dres, dout, N * C * sizeof(float));  // the residual path passes dout through
  cpu::LayerNormBackward(dres, p.grad("ln2w").f32(), p.grad("ln2b").f32(), dbuf, a.res2,
                         p.param("ln2w").f32(), a.ln2_mean, a.ln2_rstd, N, C);
  // Attention branch: res2 = inp + attproj(attention(qkv(ln1(inp)))); dres now holds d(res2).
  cpu::MatmulBackward(dbuf, p.grad("attprojw").f32(), p.grad("attprojb").f32(), dres, a.atty,
                      p.param("attprojw").f32(), N, C, C);
  attention_->Backward(dqkv_.f32(), dbuf, a.qkv, a.atty, a.att_lse, B_, T_, C, config_.n_head);
  cpu::MatmulBackward(dbuf, p.grad("qkvw").f32(), p.grad("qkvb").f32(), dqkv_.f32(), a.ln1,
                      p.param("qkvw").f32(), N, C, 3 * C);
  cpu::LayerNormBackward(dres, p.grad("ln1w").f32(), p.grad("ln1b").f32(), dbuf, inp,
                         p.param("ln1w").f32(), a.ln1_mean, a.ln1_rstd, N, C);
  cur_dres_ = 1 - cur_dres_;
}

void GPT2::HeadForward(const Batch& batch) {
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const ParamBlock& h = blocks_[head_stage()];
  const float* x = StageInput(head_stage());
  cpu::LayerNormForward(lnf_.f32(), lnf_mean_.f32(), lnf_rstd_.f32(), x, h.param("lnfw").f32(),
                        h.param("lnfb").f32(), N, C);
  cpu::MatmulForward(logits_.f32(), nullptr, lnf_.f32(), blocks_[0].param("wte").f32(), nullptr, N,
                     C, config_.padded_vocab_size);
  mean_loss_ = 0.0f;
  valid_targets_ = 0;
  if (batch.targets == nullptr) return;
  cpu::CrossEntropyForward(losses_.f32(), lse_.f32(), logits_.f32(), batch.targets, N,
                           config_.vocab_size, config_.padded_vocab_size);
  double sum = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    if (batch.targets[i] >= 0) {
      sum += losses_.f32()[i];
      ++valid_targets_;
    }
  }
  mean_loss_ = valid_targets_ ? static_cast<float>(sum / valid_targets_) : 0.0f;
}

void GPT2::HeadBackward(const Batch& batch, float loss_scale) {
  MT_CHECK(batch.targets != nullptr) << "Backward needs targets";
  const int64_t N = static_cast<int64_t>(B_) * T_, C = config_.n_embd;
  const int64_t Vp = config_.padded_vocab_size;
  const ParamBlock& h = blocks_[head_stage()];
  float dloss = valid_targets_ ? loss_scale / valid_targets_ : 0.0f;
  float* dlogits = logits_.f32();  // in place: the logits are not needed any more
  cpu::CrossEntropyBackward(dlogits, logits_.f32(), lse_.f32(), batch.targets, dloss, N,
                            config_.vocab_size, Vp);
  cpu::MatmulBackward(dbuf_.f32(), blocks_[0].grad("wte").f32(), nullptr, dlogits, lnf_.f32(),
                      blocks_[0].param("wte").f32(), N, C, Vp);
  cur_dres_ = 0;
  dres_[0].SetZero();
  cpu::LayerNormBackward(dres_[0].f32(), h.grad("lnfw").f32(), h.grad("lnfb").f32(), dbuf_.f32(),
                         StageInput(head_stage()), h.param("lnfw").f32(), lnf_mean_.f32(),
                         lnf_rstd_.f32(), N, C);
}

}  // namespace memtrain::core
