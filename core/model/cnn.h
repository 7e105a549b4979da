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
