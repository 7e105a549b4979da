// GPT-2 as stages of flat blocks: stage 0 = token + position embedding {wte (Vp, C), wpe (maxT,
// C)}, stages 1..L = transformer blocks, stage L+1 = head {lnfw, lnfb (C)} whose LM head is tied to
// wte (it reads block 0 and accumulates into block 0's gradient). Layouts match llm.c: linear
// weights are (out, in), qkv rows are [Q; K; V], GELU is the tanh form, LayerNorm eps 1e-5.
//
//   GPT2Config cfg{.max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd =
//   256}; MT_ASSIGN_OR_RETURN(std::unique_ptr<GPT2> model, GPT2::Create(cfg));
//   model->InitWeights(/*seed=*/1337);
//   MT_RETURN_IF_ERROR(model->Prepare({.B = B, .T = T, .mode = core::ModelMode::kTrain}));
//   core::Engine engine(model.get());
//
// Activation plans by mode (Prepare): kTrain keeps every block's activations; kTrainRecompute
// keeps each block's input (the residual stream) and one block's activations, re-running a
// block's forward at the start of its backward; kEval / kForwardOnly keep two residual buffers per
// lane and one block's activations, and no backward scratch.
#ifndef MEMTRAIN_CORE_MODEL_GPT2_H_
#define MEMTRAIN_CORE_MODEL_GPT2_H_

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention.h"
#include "core/model.h"
#include "core/param_block.h"

namespace memtrain::core {

struct GPT2Config {
  int max_seq_len = 1024;     // maxT
  int vocab_size = 50257;     // V
  int padded_vocab_size = 0;  // Vp; 0 = V rounded up to a multiple of 128
  int n_layer = 12;           // L
  int n_head = 12;            // NH
  int n_embd = 768;           // C

  // InvalidArgument naming the field (e.g. "GPT2Config::n_embd") if the sizes are
  // inconsistent; fills padded_vocab_size.
  absl::Status Validate();
  std::string ToString() const;
};

// Names of the per-layer parameters, in block order (as in llm.c).
extern const char* const kGPT2LayerParams[12];

class GPT2 : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<GPT2>> Create(GPT2Config config,
                                                      Device device = Device::Cpu());

  // The bytes a model of `config` on `device` allocates there, per allocator tag (indexed by
  // MemoryTag), before anything is allocated: Create (kParams), the engine's first Backward
  // (kGrads: every block's gradients; training modes only) and Prepare(options) (kActivations,
  // kScratch). Exact: the same sizes Create and Prepare use, as core::GetMemoryStats counts them.
  // Optimizer state is the optimizer's (kOptimizer stays 0 here). Sizes too large for int64
  // saturate at its maximum. InvalidArgument as Create or Prepare would refuse the sizes.
  using MemoryEstimate = core::MemoryEstimate;
  static absl::StatusOr<MemoryEstimate> EstimateMemory(GPT2Config config,
                                                       const PrepareOptions& options,
                                                       Device device = Device::Cpu());

  // GPT-2 initialisation from Philox(seed): weights N(0, 0.02), residual projections (attprojw,
  // fcprojw) N(0, 0.02 / sqrt(2L)), biases 0, LayerNorm weights 1. The same seed gives the same
  // weights on any machine and thread count.
  void InitWeights(uint64_t seed);

  const GPT2Config& config() const { return config_; }
  int64_t num_parameters() const;

  // Model interface.
  int num_stages() const override { return config_.n_layer + 2; }
  ParamBlock& block(int stage) override { return blocks_[stage]; }
  const ParamBlock& block(int stage) const { return blocks_[stage]; }
  std::vector<int> extra_blocks(int stage) const override;
  using Model::Prepare;
  absl::Status Prepare(const PrepareOptions& options) override;
  absl::Status ValidateBatch(const Batch& batch) const override;
  absl::Status ForwardStage(int stage, const Batch& batch, Pass pass, int lane,
                            const ExecContext& ctx) override;
  absl::Status BackwardStage(int stage, const Batch& batch, float loss_scale,
                             const ExecContext& ctx) override;
  double Loss(int lane = 0) const override;

  // (B*T, Vp) logits of the last forward; overwritten by their gradient during Backward. A
  // forward-only plan keeps only the last row chunk (its losses are what it is for).
  const Tensor& logits() const { return logits_; }
  // (B, T) per-position losses of the last forward of `lane` (0 where no target).
  const Tensor& losses(int lane = 0) const { return losses_[lane]; }
  // Bytes of activations and backward scratch allocated by Prepare.
  int64_t activation_bytes() const;

  // The attention every block calls (not owned; null restores the built-in local one).
  void set_attention(Attention* attention) {
    attention_ = attention ? attention : &local_attention_;
  }

  static constexpr int kEmbeddingStage = 0;
  int head_stage() const { return config_.n_layer + 1; }

 private:
  GPT2(GPT2Config config, Device device)
      : config_(config), device_(device), be_(&BackendFor(device)) {}

  // Activations of one transformer block, views into one flat buffer. The block's output is
  // the next entry of the residual stream (resid_).
  struct BlockActs {
    Tensor flat;
    float* ln1;       // (B, T, C)
    float* ln1_mean;  // (B, T)
    float* ln1_rstd;  // (B, T)
    float* qkv;       // (B, T, 3C)
    float* atty;      // (B, T, C)
    float* att_lse;   // (B, NH, T)
    float* res2;      // (B, T, C)  input + attention projection
    float* ln2;       // (B, T, C)
    float* ln2_mean;  // (B, T)
    float* ln2_rstd;  // (B, T)
    float* fch;       // (B, T, 4C)
    float* fch_gelu;  // (B, T, 4C)
  };

  // Entry i of the residual stream of `lane`: 0 = embedding output, l + 1 = block l's output.
  float* Resid(int i, int lane) const;
  const BlockActs& Acts(int layer) const { return acts_.size() == 1 ? acts_[0] : acts_[layer]; }
  absl::Status BlockForward(int layer, const BlockActs& a, const float* inp, float* out,
                            const ExecContext& ctx);
  absl::Status BlockBackward(int layer, const ExecContext& ctx);
  void HeadForward(const Batch& batch, int lane, const ExecContext& ctx);
  void HeadBackward(const Batch& batch, float loss_scale, const ExecContext& ctx);
  AttentionCall Call(int layer, const ExecContext& ctx) const {
    return {layer, B_, T_, config_.n_embd, config_.n_head, &ctx};
  }

  GPT2Config config_;
  Device device_;
  LocalAttention local_attention_;
  Attention* attention_ = &local_attention_;
  std::vector<ParamBlock> blocks_;

  Backend* be_;
  int B_ = 0, T_ = 0;
  ModelMode mode_ = ModelMode::kTrain;
  // Residual stream (B, T, C) each: training modes L + 1 entries; forward-only modes two per
  // lane, used in turn (entry i of lane k is resid_[2k + i % 2]).
  std::vector<Tensor> resid_;
  std::vector<BlockActs> acts_;       // kTrain: L; other modes: 1, shared by every block
  Tensor lnf_, lnf_mean_, lnf_rstd_;  // (B, T, C), (B, T), (B, T)
  Tensor logits_;                     // (B, T, Vp), reused for dlogits
  Tensor lse_;                        // (B, T)
  std::vector<Tensor> losses_;        // (B, T) per lane
  std::vector<int> valid_targets_;    // per lane
  // The batch's token ids on the model's device when that is not the host: inputs and targets
  // (B, T) per lane, uploaded by the embedding stage (undefined on the CPU, which reads the batch).
  std::vector<Tensor> dev_inputs_, dev_targets_;
  const int32_t* Inputs(const Batch& batch, int lane) const;
  const int32_t* Targets(const Batch& batch, int lane) const;
  // Backward scratch shared by all blocks (training modes only).
  Tensor dres_[2];  // (B, T, C) residual-stream gradient, ping-pong
  Tensor dbuf_;     // (B, T, C)
  Tensor dqkv_;     // (B, T, 3C)
  Tensor dfch_;     // (B, T, 4C)
  int cur_dres_ = 0;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_MODEL_GPT2_H_
