#include "parallel/ulysses.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"

namespace memtrain::parallel {
namespace {

// Per-rank element displacements of consecutive segments.
std::vector<int64_t> Displs(const std::vector<int64_t>& counts) {
  std::vector<int64_t> d(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
  return d;
}

int64_t Total(const std::vector<int64_t>& counts) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  return n;
}

}  // namespace

UlyssesAttention::UlyssesAttention(Communicator* sequence, int64_t T, UlyssesOptions options)
    : comm_(sequence), T_(T), options_(options), P_(sequence->size()), r_(sequence->rank()) {}

absl::Status UlyssesAttention::Check(int64_t T, int64_t NH, int64_t C, int P) {
  if (T < P) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "train.seq_len = %d is shorter than parallel.sequence = %d: every sequence-parallel rank "
        "needs at least one token; lower parallel.sequence or raise train.seq_len",
        T, P));
  }
  if (NH < P) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.sequence = %d is more than the model's %d attention heads (model.gpt.n_head): "
        "Ulysses gives every rank at least one head; use at most %d sequence ranks",
        P, NH, NH));
  }
  if (NH <= 0 || C % NH != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model.gpt.n_embd = %d is not a multiple of model.gpt.n_head = %d", C, NH));
  }
  return absl::OkStatus();
}

UlyssesAttention::Sizes UlyssesAttention::SizesFor(const core::AttentionShape& s, int64_t T, int P,
                                                   int r, UlyssesOptions options) {
  const int64_t HS = s.C / std::max<int64_t>(1, s.NH);
  const int64_t NHr = SplitCount(s.NH, P, r), Cr = NHr * HS, Tr = SplitCount(T, P, r), B = s.B;
  const int64_t C = s.C, NH = s.NH;
  const bool training = core::IsTrainingMode(s.mode);
  Sizes n;
  n.kept_sets = options.keep_exchanged && s.mode == core::ModelMode::kTrain ? s.n_layer : 1;
  n.qkv = B * T * 3 * Cr;
  n.out = B * T * Cr;
  n.lse = B * NHr * T;
  // Backward re-sends q, k, v, out and lse only in a training plan without recompute that keeps
  // no per-layer tensors (with recompute the block's forward has just run).
  const bool resend = s.mode == core::ModelMode::kTrain && n.kept_sets == 1;
  // The exchange buffers: the largest message of any exchange, sent and received. In backward
  // they also hold d(out) (in send, once sent) and dq, dk, dv (in recv, until packed).
  n.send = std::max(B * Tr * 3 * C, B * T * (Cr + NHr));
  n.recv = std::max(B * T * 3 * Cr, B * Tr * (C + NH));
  if (training) {
    n.send = std::max({n.send, B * Tr * (resend ? 5 * C + NH : C), B * T * 3 * Cr, B * T * Cr});
    n.recv = std::max({n.recv, B * T * (resend ? 5 * Cr + NHr : Cr), B * Tr * 3 * C});
  }
  return n;
}

UlyssesBytes UlyssesAttention::Estimate(const core::AttentionShape& shape, int64_t T, int P, int r,
                                        UlyssesOptions options) {
  const Sizes n = SizesFor(shape, T, P, r, options);
  const int64_t f = sizeof(float);
  return {.activations = n.kept_sets * (n.qkv + n.out + n.lse) * f,
          .scratch = (n.send + n.recv) * f};
}

absl::Status UlyssesAttention::Prepare(const core::AttentionShape& s) {
  MT_RETURN_IF_ERROR(Check(T_, s.NH, s.C, P_));
  if (s.T != local_T()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "UlyssesAttention: the model is prepared for T = %d but sequence rank %d of %d holds %d "
        "of the %d tokens; prepare it with local_T()",
        s.T, r_, P_, local_T(), T_));
  }
  if (s.device.type != core::DeviceType::kCpu) {
    return absl::UnimplementedError(
        "parallel.sequence > 1 runs on the CPU only so far (train.device = \"cpu\")");
  }
  // Every rank computes every rank's largest message, so all refuse together.
  for (int j = 0; j < P_; ++j) {
    const Sizes nj = SizesFor(s, T_, P_, j, options_);
    if (std::max(nj.send, nj.recv) > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "train.seq_len = %d with parallel.sequence = %d makes all-to-all messages of %d floats, "
          "more than MPI's int counts; lower train.batch_size or train.seq_len, or raise "
          "parallel.sequence",
          T_, P_, std::max(nj.send, nj.recv)));
    }
  }
  B_ = s.B;
  C_ = s.C;
  NH_ = s.NH;
  HS_ = s.C / s.NH;
  heads_.assign(P_, 0);
  head0_.assign(P_, 0);
  tokens_.assign(P_, 0);
  token0_.assign(P_, 0);
  for (int j = 0; j < P_; ++j) {
    heads_[j] = SplitCount(NH_, P_, j);
    head0_[j] = SplitOffset(NH_, P_, j);
    tokens_[j] = SplitCount(T_, P_, j);
    token0_[j] = SplitOffset(T_, P_, j);
  }
  const Sizes n = SizesFor(s, T_, P_, r_, options_);
  auto f32 = [&](int64_t count, core::MemoryTag tag) {
    return core::Tensor::Empty({count}, core::DType::kF32, tag, s.device);
  };
  per_layer_ = n.kept_sets > 1;
  kept_.clear();
  kept_.resize(n.kept_sets);
  for (Heads& h : kept_) {
    MT_ASSIGN_OR_RETURN(h.qkv, f32(n.qkv, core::MemoryTag::kActivations));
    MT_ASSIGN_OR_RETURN(h.out, f32(n.out, core::MemoryTag::kActivations));
    MT_ASSIGN_OR_RETURN(h.lse, f32(n.lse, core::MemoryTag::kActivations));
  }
  held_layer_ = -1;
  training_ = core::IsTrainingMode(s.mode);
  MT_ASSIGN_OR_RETURN(send_, f32(n.send, core::MemoryTag::kScratch));
  MT_ASSIGN_OR_RETURN(recv_, f32(n.recv, core::MemoryTag::kScratch));
  return absl::OkStatus();
}

UlyssesAttention::Heads& UlyssesAttention::HeadsOf(int layer) {
  return per_layer_ ? kept_[layer] : kept_[0];
}

absl::Status UlyssesAttention::Exchange(const float* send, const std::vector<int64_t>& send_counts,
                                        float* recv, const std::vector<int64_t>& recv_counts) {
  for (int j = 0; j < P_; ++j) {
    if (j == r_) continue;
    counters_.sent_bytes += send_counts[j] * static_cast<int64_t>(sizeof(float));
    counters_.received_bytes += recv_counts[j] * static_cast<int64_t>(sizeof(float));
  }
  ++counters_.exchanges;
  return comm_
      ->AllToAllV(send, send_counts, Displs(send_counts), recv, recv_counts, Displs(recv_counts),
                  core::DType::kF32)
      .Wait();
}

absl::Status UlyssesAttention::Forward(const core::AttentionCall& call, float* out, float* lse,
                                       const float* qkv) {
  if (call.B != B_ || call.T != local_T() || call.C != C_ || call.NH != NH_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "UlyssesAttention: called with B=%d T=%d C=%d NH=%d but prepared for B=%d T=%d C=%d NH=%d",
        call.B, call.T, call.C, call.NH, B_, local_T(), C_, NH_));
  }
  const int64_t B = B_, T = T_, Tr = local_T(), C = C_, Cr = HeadCols(r_), NHr = heads_[r_];
  Heads& h = HeadsOf(call.layer);
  float* snd = send_.f32();
  float* rcv = recv_.f32();
  // q, k, v of the heads of rank j, per local token: [q_j | k_j | v_j], the kernel's layout.
  std::vector<int64_t> sc(P_), rc(P_);
  for (int j = 0; j < P_; ++j) {
    sc[j] = B * Tr * 3 * HeadCols(j);
    rc[j] = B * tokens_[j] * 3 * Cr;
  }
  std::vector<int64_t> sd = Displs(sc), rd = Displs(rc);
#pragma omp parallel for collapse(2) schedule(static)
  for (int j = 0; j < P_; ++j) {
    for (int64_t bt = 0; bt < B * Tr; ++bt) {
      const int64_t Cj = HeadCols(j), c0 = HeadCol0(j);
      float* dst = snd + sd[j] + bt * 3 * Cj;
      const float* src = qkv + bt * 3 * C;
      for (int part = 0; part < 3; ++part) {
        std::memcpy(dst + part * Cj, src + part * C + c0, Cj * sizeof(float));
      }
    }
  }
  MT_RETURN_IF_ERROR(Exchange(snd, sc, rcv, rc));
  // From rank i: its tokens (B, T_i, 3 C_r) -> rows token0_i.. of every sequence.
  float* hqkv = h.qkv.f32();
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < P_; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(hqkv + (b * T + token0_[i]) * 3 * Cr, rcv + rd[i] + b * tokens_[i] * 3 * Cr,
                  tokens_[i] * 3 * Cr * sizeof(float));
    }
  }
  core::BackendFor(call.ctx->device)
      .AttentionForward(*call.ctx, h.out.f32(), h.lse.f32(), hqkv, B, T, Cr, NHr);
  held_layer_ = call.layer;
  // Back to the tokens: to rank i, per token of i, [out (C_r) | lse of the NH_r heads].
  for (int i = 0; i < P_; ++i) {
    sc[i] = B * tokens_[i] * (Cr + NHr);
    rc[i] = B * Tr * (HeadCols(i) + heads_[i]);
  }
  sd = Displs(sc);
  rd = Displs(rc);
  const float* hout = h.out.f32();
  const float* hlse = h.lse.f32();
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < P_; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < tokens_[i]; ++t) {
        const int64_t tg = token0_[i] + t;
        float* dst = snd + sd[i] + (b * tokens_[i] + t) * (Cr + NHr);
        std::memcpy(dst, hout + (b * T + tg) * Cr, Cr * sizeof(float));
        for (int64_t k = 0; k < NHr; ++k) dst[Cr + k] = hlse[(b * NHr + k) * T + tg];
      }
    }
  }
  MT_RETURN_IF_ERROR(Exchange(snd, sc, rcv, rc));
#pragma omp parallel for collapse(2) schedule(static)
  for (int j = 0; j < P_; ++j) {
    for (int64_t bt = 0; bt < B * Tr; ++bt) {
      const int64_t Cj = HeadCols(j), NHj = heads_[j], b = bt / Tr, t = bt % Tr;
      const float* src = rcv + rd[j] + bt * (Cj + NHj);
      std::memcpy(out + bt * C + HeadCol0(j), src, Cj * sizeof(float));
      for (int64_t k = 0; k < NHj; ++k) lse[(b * NH_ + head0_[j] + k) * Tr + t] = src[Cj + k];
    }
  }
  return absl::OkStatus();
}

absl::Status UlyssesAttention::Backward(const core::AttentionCall& call, float* dqkv,
                                        const float* dout, const float* qkv, const float* out,
                                        const float* lse) {
  if (!training_) {
    return absl::FailedPreconditionError(
        "UlyssesAttention::Backward: prepared for a plan without backward");
  }
  if (call.B != B_ || call.T != local_T() || call.C != C_ || call.NH != NH_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "UlyssesAttention::Backward: called with B=%d T=%d C=%d NH=%d but prepared for B=%d T=%d "
        "C=%d NH=%d",
        call.B, call.T, call.C, call.NH, B_, local_T(), C_, NH_));
  }
  const int64_t B = B_, T = T_, Tr = local_T(), C = C_, Cr = HeadCols(r_), NHr = heads_[r_];
  Heads& h = HeadsOf(call.layer);
  // The head-sharded q, k, v, out, lse of this layer are at hand if kept per layer, or if the
  // one set holds this layer (the last layer of a forward, or a recomputed block's forward).
  const bool have = per_layer_ || held_layer_ == call.layer;
  float* snd = send_.f32();
  float* rcv = recv_.f32();
  // To rank j, per local token: [dout_j] or [q_j | k_j | v_j | out_j | dout_j | lse_j].
  auto width = [&](int j) { return have ? HeadCols(j) : 5 * HeadCols(j) + heads_[j]; };
  std::vector<int64_t> sc(P_), rc(P_);
  for (int j = 0; j < P_; ++j) {
    sc[j] = B * Tr * width(j);
    rc[j] = B * tokens_[j] * width(r_);
  }
  std::vector<int64_t> sd = Displs(sc), rd = Displs(rc);
#pragma omp parallel for collapse(2) schedule(static)
  for (int j = 0; j < P_; ++j) {
    for (int64_t bt = 0; bt < B * Tr; ++bt) {
      const int64_t Cj = HeadCols(j), c0 = HeadCol0(j), NHj = heads_[j], b = bt / Tr, t = bt % Tr;
      float* dst = snd + sd[j] + bt * width(j);
      if (!have) {
        for (int part = 0; part < 3; ++part) {
          std::memcpy(dst, qkv + bt * 3 * C + part * C + c0, Cj * sizeof(float));
          dst += Cj;
        }
        std::memcpy(dst, out + bt * C + c0, Cj * sizeof(float));
        dst += Cj;
      }
      std::memcpy(dst, dout + bt * C + c0, Cj * sizeof(float));
      if (!have) {
        for (int64_t k = 0; k < NHj; ++k) dst[Cj + k] = lse[(b * NH_ + head0_[j] + k) * Tr + t];
      }
    }
  }
  MT_RETURN_IF_ERROR(Exchange(snd, sc, rcv, rc));
  float* hqkv = h.qkv.f32();
  float* hout = h.out.f32();
  float* hlse = h.lse.f32();
  // d(out) of the heads goes to the send buffer (free once the exchange is done) and dq, dk, dv
  // to the receive buffer (free once unpacked), so backward needs no buffers of its own.
  float* hdout = snd;
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < P_; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < tokens_[i]; ++t) {
        const int64_t row = b * T + token0_[i] + t;
        const float* src = rcv + rd[i] + (b * tokens_[i] + t) * width(r_);
        if (!have) {
          std::memcpy(hqkv + row * 3 * Cr, src, 3 * Cr * sizeof(float));
          std::memcpy(hout + row * Cr, src + 3 * Cr, Cr * sizeof(float));
          src += 4 * Cr;
        }
        std::memcpy(hdout + row * Cr, src, Cr * sizeof(float));
        if (!have) {
          for (int64_t k = 0; k < NHr; ++k) {
            hlse[(b * NHr + k) * T + token0_[i] + t] = src[Cr + k];
          }
        }
      }
    }
  }
  held_layer_ = per_layer_ ? held_layer_ : call.layer;
  float* hdqkv = rcv;
  core::BackendFor(call.ctx->device)
      .AttentionBackward(*call.ctx, hdqkv, hdout, hqkv, hout, hlse, B, T, Cr, NHr);
  // dq, dk, dv back to the tokens: to rank i its rows (B, T_i, 3 C_r).
  for (int i = 0; i < P_; ++i) {
    sc[i] = B * tokens_[i] * 3 * Cr;
    rc[i] = B * Tr * 3 * HeadCols(i);
  }
  sd = Displs(sc);
  rd = Displs(rc);
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < P_; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(snd + sd[i] + b * tokens_[i] * 3 * Cr, hdqkv + (b * T + token0_[i]) * 3 * Cr,
                  tokens_[i] * 3 * Cr * sizeof(float));
    }
  }
  MT_RETURN_IF_ERROR(Exchange(snd, sc, rcv, rc));
#pragma omp parallel for collapse(2) schedule(static)
  for (int j = 0; j < P_; ++j) {
    for (int64_t bt = 0; bt < B * Tr; ++bt) {
      const int64_t Cj = HeadCols(j), c0 = HeadCol0(j);
      const float* src = rcv + rd[j] + bt * 3 * Cj;
      for (int part = 0; part < 3; ++part) {
        std::memcpy(dqkv + bt * 3 * C + part * C + c0, src + part * Cj, Cj * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

core::Batch ShardBatch(const core::Batch& global, const UlyssesAttention& attention,
                       std::vector<int32_t>* inputs, std::vector<int32_t>* targets) {
  const int64_t T = global.T, Tr = attention.local_T(), t0 = attention.offset();
  inputs->resize(static_cast<size_t>(global.B) * Tr);
  targets->resize(global.targets != nullptr ? inputs->size() : 0);
  for (int64_t b = 0; b < global.B; ++b) {
    std::copy_n(global.inputs + b * T + t0, Tr, inputs->data() + b * Tr);
    if (global.targets != nullptr) {
      std::copy_n(global.targets + b * T + t0, Tr, targets->data() + b * Tr);
    }
  }
  return core::Batch{inputs->data(), global.targets != nullptr ? targets->data() : nullptr,
                     global.B, static_cast<int>(Tr), global.pos_offset + static_cast<int>(t0)};
}

namespace {

int64_t ValidTargets(const int32_t* targets, int64_t n) {
  if (targets == nullptr) return 0;
  int64_t v = 0;
  for (int64_t i = 0; i < n; ++i) v += targets[i] >= 0;
  return v;
}

}  // namespace

absl::StatusOr<ShardedLoss> ForwardSharded(core::Engine& engine, const core::Batch& global,
                                           UlyssesAttention& attention, core::Pass pass,
                                           std::vector<int32_t>* inputs,
                                           std::vector<int32_t>* targets) {
  ShardedLoss r;
  r.local = ShardBatch(global, attention, inputs, targets);
  MT_RETURN_IF_ERROR(engine.Forward(r.local, pass));
  r.valid_local = ValidTargets(r.local.targets, int64_t{r.local.B} * r.local.T);
  r.valid_global = ValidTargets(global.targets, int64_t{global.B} * global.T);
  double weighted = r.valid_local > 0 ? engine.Loss() * static_cast<double>(r.valid_local) : 0.0;
  MT_RETURN_IF_ERROR(
      attention.group().AllReduce(&weighted, 1, core::DType::kF64, ReduceOp::kSum).Wait());
  r.loss = r.valid_global > 0 ? weighted / static_cast<double>(r.valid_global) : 0.0;
  return r;
}

absl::StatusOr<double> EvaluateSharded(core::Engine& engine, core::DataLoader& loader,
                                       int max_batches, UlyssesAttention& attention) {
  const int B = loader.B(), T = loader.T();
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  std::vector<int32_t> local_inputs, local_targets;
  const core::Batch global{inputs.data(), targets.data(), B, T};
  const int64_t n = std::min<int64_t>(max_batches, loader.num_batches());
  loader.Reset();
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    loader.Next(inputs.data(), targets.data());
    MT_ASSIGN_OR_RETURN(ShardedLoss l,
                        ForwardSharded(engine, global, attention, core::Pass::kEvalForward,
                                       &local_inputs, &local_targets));
    sum += l.loss;
  }
  return n > 0 ? sum / static_cast<double>(n) : 0.0;
}

}  // namespace memtrain::parallel
