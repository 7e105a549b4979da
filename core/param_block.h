// A ParamBlock is one stage's parameters as ONE flat buffer with named, shaped views into it. The
// layout (the views) is fixed at creation; the storage is not:
//  - gradients are allocated when a backward first needs them (EnsureGrads) and can be released,
//    so evaluation and zeroth-order runs never pay for them;
//  - params and grads can be bound to another buffer of the same size (an offload pool slot, a
//    device buffer, a federated client's copy) and unbound back to the block's own storage;
//  - an optional mask (u8, 1 = keep) marks pruned weights; optimizers keep them exactly zero.
// Every policy (data parallel, offload, optimizer, zeroth-order perturbation, pruning,
// checkpoints) works on these flat buffers.
//
//   MT_ASSIGN_OR_RETURN(ParamBlock blk, ParamBlock::Create("h.0", /*id=*/1,
//       {{"ln1w", {C}}, {"qkvw", {3 * C, C}}, ...}));
//   float* qkvw = blk.param("qkvw").f32();   // (3C, C) at its offset in blk.params()
//   MT_RETURN_IF_ERROR(blk.EnsureGrads());    // zeroed (numel) gradients, tag kGrads
//   MT_RETURN_IF_ERROR(blk.BindParams(slot)); // compute on `slot` ... then blk.UnbindParams();
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
  // False for state that lives with the parameters but is not trained (BatchNorm's running
  // statistics): optimizers leave it alone, averaging and checkpoints treat it like the rest.
  bool trainable = true;
};

struct ParamView {
  std::string name;
  Shape shape;
  int64_t offset = 0;  // elements from the start of the flat buffer
  int64_t numel = 0;
  // Matrices (ndim >= 2) get weight decay by default; biases and norm weights do not.
  bool decay = false;
  bool trainable = true;  // see ParamSpec
};

class ParamBlock {
 public:
  ParamBlock() = default;
  // Allocates zeroed params (tag kParams) on `device`. Gradients come later (EnsureGrads).
  static absl::StatusOr<ParamBlock> Create(std::string name, int id,
                                           const std::vector<ParamSpec>& specs,
                                           Device device = Device::Cpu());

  const std::string& name() const { return name_; }
  // Position of the block in its model; also the Philox stream of anything drawn per block.
  int id() const { return id_; }
  int64_t numel() const { return numel_; }
  // Where the current params live (the block's own device when nothing holds them).
  Device device() const { return params_.defined() ? params_.device() : device_; }

  const Tensor& params() const { return params_; }  // flat (numel)
  // Flat (numel); undefined until EnsureGrads (or BindGrads).
  const Tensor& grads() const { return grads_; }
  bool has_grads() const { return grads_.defined() || numel_ == 0; }
  const std::vector<ParamView>& views() const { return views_; }

  // Named views; abort on an unknown name (a programming error, not user input).
  Tensor param(absl::string_view name) const;
  Tensor grad(absl::string_view name) const;
  const ParamView& view(absl::string_view name) const;
  bool has_view(absl::string_view name) const;

  // ---- gradients ----
  // Allocates zeroed gradients on the params' device the first time; ResourceExhausted past the
  // device's budget. A no-op when they exist (or are bound).
  absl::Status EnsureGrads();
  // Frees the block's own gradients (a bound gradient buffer is only unbound).
  void ReleaseGrads();
  void ZeroGrad() const {
    if (grads_.defined()) grads_.SetZero();
  }

  // ---- storage binding ----
  // Makes the block read and write `storage` (f32, numel elements, any device) instead of its
  // current params until UnbindParams. The buffer it replaces is kept (not copied either way).
  // Bindings nest: an offload window binds a block to a device slot, a zeroth-order hook binds
  // it on top to a perturbed copy, and each Unbind returns to the binding below.
  absl::Status BindParams(Tensor storage);
  void UnbindParams();
  bool params_bound() const { return !params_stack_.empty(); }
  absl::Status BindGrads(Tensor storage);
  void UnbindGrads();
  bool grads_bound() const { return !grads_stack_.empty(); }

  // ---- storage that lives elsewhere (offload) ----
  // Frees the block's own params and gradients: its values live in a tier store, and it has
  // storage only while something binds it (params and grads both undefined otherwise). Then
  // EnsureGrads is a no-op, since gradients also come through BindGrads. Call with nothing bound.
  void ReleaseStorage();
  // Gives a released block own params again (f32, numel, on the block's device); InvalidArgument
  // for the wrong size.
  absl::Status AdoptParams(Tensor params);
  bool backed() const { return backed_; }

  // ---- pruning mask ----
  // u8 (numel) on the params' device, 1 = keep, 0 = pruned; zeroes the pruned params at once.
  // InvalidArgument on a wrong dtype, size or device. Optimizers keep pruned weights exactly 0.
  absl::Status SetMask(Tensor mask);
  void ClearMask() { mask_ = Tensor(); }
  const Tensor& mask() const { return mask_; }
  bool has_mask() const { return mask_.defined(); }
  // Zeroes the pruned params again (after an update that does not know about masks).
  void ApplyMask() const;

 private:
  absl::Status CheckStorage(const Tensor& t, const char* what) const;

  std::string name_;
  int id_ = 0;
  int64_t numel_ = 0;
  Tensor params_;
  Tensor grads_;
  Device device_;
  bool backed_ = true;                // false after ReleaseStorage
  std::vector<Tensor> params_stack_;  // what each BindParams replaced (innermost last)
  std::vector<Tensor> grads_stack_;   // likewise for grads (may hold undefined: lazy)
  Tensor mask_;
  std::vector<ParamView> views_;
};

// An owned flat buffer with the layout of a block: a client's copy of the weights, a ZO scratch
// copy, an accumulator for weighted averages (f64). Ops run on the buffer's device.
//
//   MT_ASSIGN_OR_RETURN(BlockBuffer sum, BlockBuffer::Like(block, DType::kF64));
//   sum.AddWeighted(0.25, client_params);   // in double
//   sum.WriteScaled(block.params(), 1.0);   // f32 = f64 * scale
class BlockBuffer {
 public:
  BlockBuffer() = default;
  // Zeroed f32 or f64 storage of block.numel() elements, counted under `tag`.
  static absl::StatusOr<BlockBuffer> Like(const ParamBlock& block, DType dtype = DType::kF32,
                                          MemoryTag tag = MemoryTag::kOther);
  static absl::StatusOr<BlockBuffer> Like(const ParamBlock& block, DType dtype, MemoryTag tag,
                                          Device device);

  const Tensor& data() const { return data_; }
  int64_t numel() const { return data_.numel(); }
  // A named view (the block's layout), f32 buffers only.
  Tensor view(absl::string_view name) const;

  void SetZero() const { data_.SetZero(); }
  // this = src (same dtype and size).
  void CopyFrom(const Tensor& src) const { data_.CopyFrom(src); }
  // this += alpha * x (f32 buffer, f32 x).
  void Axpy(float alpha, const Tensor& x) const;
  // this += w * x in double (f64 buffer, f32 x): exact-order weighted sums for averaging.
  void AddWeighted(double w, const Tensor& x) const;
  // out (f32) = this (f64) * scale, rounded once.
  void WriteScaled(const Tensor& out, double scale) const;

 private:
  Tensor data_;
  std::vector<ParamView> views_;
};

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_PARAM_BLOCK_H_
