// A small VGG-style image classifier as stages of flat blocks, run by the same engine as GPT-2:
// one stage per conv3x3 (pad 1) + BatchNorm + ReLU layer, a 2x2 max-pool after the layers the
// config marks, and a linear head with softmax cross-entropy. Sized for 28x28 inputs
// (Fashion-MNIST); CPU only so far.
//
//   MT_ASSIGN_OR_RETURN(auto cnn, core::Cnn::Create({.layers = {32, kPool, 64, kPool, 128,
//                                                               kPool}}));
//   cnn->InitWeights(1);
//   MT_RETURN_IF_ERROR(cnn->Prepare({.B = 64, .T = 1, .mode = core::ModelMode::kTrain}));
//   core::Batch batch{.targets = labels, .B = 64, .T = 1, .images = pixels};  // (64, 1, 28, 28)
//
// Blocks: "conv<i>" with views w (OC, C*3*3) [PyTorch's (OC, C, 3, 3)], b (OC), bn_w (OC),
// bn_b (OC), and the running statistics bn_mean, bn_var (OC; not trainable: optimizers leave them,
// averaging and checkpoints carry them); "head" with w (classes, features), b (classes).
//
// BatchNorm: a training forward (Pass::kTrainForward) normalises with the batch statistics and
// updates the running ones (momentum 0.1, unbiased variance, as PyTorch); every other forward uses
// the running statistics. With set_bn_stats(true), forwards instead accumulate the batch
// statistics of every BN layer (FedTiny's clients recompute them forward-only): see
// TakeBnStats.
#ifndef MEMTRAIN_CORE_MODEL_CNN_H_
#define MEMTRAIN_CORE_MODEL_CNN_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/tensor.h"

namespace memtrain::core {

inline constexpr int kPool = -1;  // in CnnConfig::layers: a 2x2 max-pool after the layer before

struct CnnConfig {
  int in_channels = 1;
  int height = 28;
  int width = 28;
  int num_classes = 10;
  // Output channels of each conv layer, in order; kPool after a layer pools its output.
  std::vector<int> layers = {32, kPool, 64, kPool, 128, kPool};
  float bn_momentum = 0.1f;
  float bn_eps = 1e-5f;

  // InvalidArgument naming the field (CnnConfig::layers, ...).
  absl::Status Validate() const;
};

class Cnn : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<Cnn>> Create(CnnConfig config);

  // The bytes a model of `config` allocates, per allocator tag, before anything exists: Create
  // (kParams), the engine's first Backward (kGrads: every block's gradients; training modes),
  // Prepare(options) (kActivations, kScratch) and an optimizer's state (kOptimizer):
  // `optimizer_bytes_per_param` bytes for every element of every block, BN statistics included
  // (an optimizer holds state_names().size() tensors of state_dtype() per block: AdamW 8, Lion 4
  // or 2, SGD 4 with momentum, else 0). Exact: the sizes Create and Prepare use, as
  // core::GetMemoryStats counts them; a training step allocates nothing more. Sizes too large for
  // int64 saturate at its maximum. InvalidArgument as Create or Prepare would refuse them.
  static absl::StatusOr<MemoryEstimate> EstimateMemory(const CnnConfig& config,
                                                       const PrepareOptions& options,
                                                       int64_t optimizer_bytes_per_param = 0);
  // The elements of each block, in stage order (the conv layers, then the head).
  static absl::StatusOr<std::vector<int64_t>> BlockNumels(const CnnConfig& config);

  // Kaiming-normal (fan-out, ReLU) conv weights, PyTorch's default linear init for the head
  // (uniform +-1/sqrt(fan_in), drawn from Philox), zero biases, BN weight 1, bias 0, mean 0,
  // var 1. A pure function of the seed.
  void InitWeights(uint64_t seed);

  const CnnConfig& config() const { return config_; }
  int num_stages() const override { return static_cast<int>(blocks_.size()); }
  ParamBlock& block(int stage) override { return blocks_[stage]; }

  using Model::Prepare;
  // T must be 1; B images per micro-batch. kForwardOnly supports one lane.
  absl::Status Prepare(const PrepareOptions& options) override;
  absl::Status ValidateBatch(const Batch& batch) const override;
  absl::Status ForwardStage(int stage, const Batch& batch, Pass pass, int lane,
                            const ExecContext& ctx) override;
  absl::Status BackwardStage(int stage, const Batch& batch, float loss_scale,
                             const ExecContext& ctx) override;
  double Loss(int lane = 0) const override;
  // Images of the last forward whose arg-max class equals the label.
  int64_t Correct() const;

  // Forward FLOPs of one image (multiply-adds x 2 of the convolutions and the head).
  int64_t ForwardFlopsPerImage() const;
  // The same per stage (conv layers, then the head).
  std::vector<int64_t> StageFlopsPerImage() const;

  // ---- BatchNorm statistics (FedTiny's adaptive BN selection) ----
  // While on, every forward normalises with the batch statistics (as in training) and adds them,
  // weighted by the batch size, to per-layer sums; the running statistics are not touched.
  void set_bn_stats(bool on);
  // The mean and the (biased) variance of every BN layer over the images seen since
  // set_bn_stats(true), flat in stage order (mean then var, OC each), and the image count.
  std::vector<double> BnStats(int64_t* images) const;

 private:
  struct Layer {
    int C = 0, H = 0, W = 0;  // input
    int OC = 0;
    bool pool = false;
    int OH() const { return pool ? H / 2 : H; }
    int OW() const { return pool ? W / 2 : W; }
  };
  struct Acts {  // per conv stage (training plans keep one per stage)
    Tensor conv, bn, mean, rstd, pool, argmax;
  };
  // What Prepare allocates, per image where it scales with B. Activation set i serves the conv
  // layers i, i + step, ... (step: one set per layer in training plans, two shared otherwise).
  struct Plan {
    struct Set {
      int64_t n = 0;   // conv and bn floats per image (the largest layer served)
      int64_t oc = 0;  // mean and rstd floats (the most channels of any layer)
      bool pool = false;
    };
    std::vector<Set> sets;
    int64_t largest = 0;  // floats per image of the largest layer input or output (backward)
    int64_t scratch = 0;  // conv im2col scratch floats (not per image)
  };
  static std::vector<Layer> MakeLayers(const CnnConfig& config);
  static absl::Status CheckPrepareOptions(const PrepareOptions& options);
  static Plan MakePlan(const std::vector<Layer>& layers, bool train);
  explicit Cnn(CnnConfig config) : config_(std::move(config)) {}
  const float* StageInput(int stage, const Batch& batch) const;
  float* StageOutput(int stage) const;

  CnnConfig config_;
  std::vector<Layer> layers_;
  int features_ = 0;  // inputs of the head
  std::vector<ParamBlock> blocks_;
  std::vector<Acts> acts_;  // kTrain: one per conv stage; otherwise a single shared set
  Tensor logits_, losses_, lse_;
  Tensor dx_[2];    // backward: ping-pong input gradients of the largest activation
  Tensor dconv_;    // backward: gradient at a conv output
  Tensor scratch_;  // conv im2col scratch
  Tensor labels_;   // int32 (B) copy of the last batch's labels
  bool bn_stats_ = false;
  std::vector<double> bn_sum_;  // per layer: mean (OC) then var (OC), weighted by images
  int64_t bn_images_ = 0;
  int64_t valid_ = 0;  // labelled images of the last forward
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_MODEL_CNN_H_
