// A ParamBlock is one stage's parameters as ONE flat buffer, with one flat gradient buffer of the
// same size and named, shaped views into both. Every policy (data parallel, offload, optimizer,
// zeroth-order perturbation, pruning masks, checkpoints) works on these flat buffers.
//
//   MT_ASSIGN_OR_RETURN(ParamBlock blk, ParamBlock::Create("h.0", /*id=*/1,
//       {{"ln1w", {C}}, {"qkvw", {3 * C, C}}, ...}));
//   float* qkvw = blk.param("qkvw").f32();   // (3C, C) at its offset in blk.params()
//   blk.ZeroGrad();
#ifndef MEMTRAIN_CORE_PARAM_BLOCK_H_
#define MEMTRAIN_CORE_PARAM_BLOCK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tensor.h"

namespace memtrain::core {

struct ParamSpec {
  std::string name;
  Shape shape;
};

struct ParamView {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // elements from the start of the flat buffer
  int64_t numel = 0;
  // Matrices (ndim >= 2) get weight decay by default; biases and norm weights do not.
  bool decay = false;
};

class ParamBlock {
 public:
  ParamBlock() = default;
  // Allocates zeroed params (tag kParams) and grads (tag kGrads) on `device`.
  static absl::StatusOr<ParamBlock> Create(std::string name, int id,
                                           const std::vector<ParamSpec>& specs,
                                           Device device = Device::Cpu());

  const std::string& name() const { return name_; }
  // Position of the block in its model; also the Philox stream of anything drawn per block.
  int id() const { return id_; }
  int64_t numel() const { return params_.numel(); }
  Device device() const { return params_.device(); }

  const Tensor& params() const { return params_; }  // flat (numel)
  const Tensor& grads() const { return grads_; }    // flat (numel)
  const std::vector<ParamView>& views() const { return views_; }

  // Named views; abort on an unknown name (a programming error, not user input).
  Tensor param(absl::string_view name) const;
  Tensor grad(absl::string_view name) const;
  const ParamView& view(absl::string_view name) const;

  void ZeroGrad() const { grads_.SetZero(); }

  // Optional pruning mask over the flat params: u8, numel() elements, 1 = keep, 0 = pruned.
  // SetMask zeroes the pruned params at once (InvalidArgument for another dtype, size or
  // device); optimizers keep them exactly 0. mask() is undefined when there is none.
  absl::Status SetMask(Tensor mask);
  void ClearMask();
  const Tensor& mask() const { return mask_; }
  bool has_mask() const { return mask_.defined(); }

 private:
  std::string name_;
  int id_ = 0;
  Tensor params_;
  Tensor grads_;
  std::vector<ParamView> views_;
  Tensor mask_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_PARAM_BLOCK_H_
