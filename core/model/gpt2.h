// GPT-2 as stages of flat blocks: stage 0 = token + position embedding {wte (Vp, C), wpe (maxT,
// C)}, stages 1..L = transformer blocks, stage L+1 = head {lnfw, lnfb (C)} whose LM head is tied to
// wte (it reads block 0 and accumulates into block 0's gradient). Layouts match llm.c: linear
// weights are (out, in), qkv rows are [Q; K; V], GELU is the tanh form, LayerNorm eps 1e-5.
//
//   GPT2Config cfg{.max_seq_len = 256, .vocab_size = 256, .n_layer = 4, .n_head = 4, .n_embd =
//   256}; MT_ASSIGN_OR_RETURN(std::unique_ptr<GPT2> model, GPT2::Create(cfg));
//   model->InitWeights(/*seed=*/1337);
//   MT_RETURN_IF_ERROR(model->Prepare(B, T));
//   core::Engine engine(model.get());
#ifndef MEMTRAIN_CORE_MODEL_GPT2_H_
#define MEMTRAIN_CORE_MODEL_GPT2_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention.h"
#include "core/engine.h"
#include "core/param_block.h"

namespace memtrain::core {

struct GPT2Config {
  int max_seq_len = 1024;     // maxT
  int vocab_size = 50257;     // V
  int padded_vocab_size = 0;  // Vp; 0 = V rounded up to a multiple of 128
  int n_layer = 12;           // L
  int n_head = 12;            // NH
  int n_embd = 768;           // C

  // InvalidArgument naming the field if the sizes are inconsistent; fills padded_vocab_size.
  absl::Status Validate();
  std::string ToString() const;
};

// Names of the per-layer parameters, in block order (as in llm.c).
extern const char* const kGPT2LayerParams[12];

class GPT2 : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<GPT2>> Create(GPT2Config config,
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
  absl::Status Prepare(int B, int T) override;
  absl::Status ValidateBatch(const Batch& batch) const override;
  void ForwardStage(int stage, const Batch& batch) override;
  void BackwardStage(int stage, const Batch& batch, float loss_scale) override;
  float loss() const override { return mean_loss_; }

  // (B, T, Vp) logits of the last forward; overwritten by their gradient during Backward.
  const Tensor& logits() const { return logits_; }
  // (B, T) per-position losses of the last forward.
  const Tensor& losses() const { return losses_; }
  // Bytes of activations and backward scratch allocated by Prepare.
  int64_t activation_bytes() const;

  // The attention every block calls (not owned; null restores the built-in local one).
  void set_attention(Attention* attention) {
    attention_ = attention ? attention : &local_attention_;
  }

  static constexpr int kEmbeddingStage = 0;
  int head_stage() const { return config_.n_layer + 1; }

 private:
  GPT2(GPT2Config config, Device device) : config_(config), device_(device) {}

  // Saved activations of one transformer block, views into one flat buffer.
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
    float* out;       // (B, T, C)  res2 + MLP projection = the next stage's input
  };

  const float* StageInput(int stage) const;
  void BlockForward(int layer, const Batch& batch);
  void BlockBackward(int layer, const Batch& batch);
  void HeadForward(const Batch& batch);
  void HeadBackward(const Batch& batch, float loss_scale);

  GPT2Config config_;
  Device device_;
  LocalAttention local_attention_;
  Attention* attention_ = &local_attention_;
  std::vector<ParamBlock> blocks_;

  int B_ = 0, T_ = 0;
  Tensor emb_out_;                    // (B, T, C)
  std::vector<BlockActs> acts_;       // L
  Tensor lnf_, lnf_mean_, lnf_rstd_;  // (B, T, C), (B, T), (B, T)
  Tensor logits_;                     // (B, T, Vp), reused for dlogits
  Tensor losses_, lse_;               // (B, T)
  // Backward scratch shared by all blocks.
  Tensor dres_[2];  // (B, T, C) residual-stream gradient, ping-pong
  Tensor dbuf_;     // (B, T, C)
  Tensor dqkv_;     // (B, T, 3C)
  Tensor dfch_;     // (B, T, 4C)
  int cur_dres_ = 0;
  int valid_targets_ = 0;
  float mean_loss_ = 0.0f;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_MODEL_GPT2_H_
