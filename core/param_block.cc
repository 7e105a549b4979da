#include "core/param_block.h"

#include "absl/strings/str_format.h"
#include "core/backend.h"

namespace memtrain::core {

absl::StatusOr<ParamBlock> ParamBlock::Create(std::string name, int id,
                                              const std::vector<ParamSpec>& specs, Device device) {
  ParamBlock b;
  b.name_ = std::move(name);
  b.id_ = id;
  int64_t offset = 0;
  for (const ParamSpec& s : specs) {
    ParamView v;
    v.name = s.name;
    v.shape = s.shape;
    v.offset = offset;
    v.numel = NumElements(s.shape);
    v.decay = s.shape.size() >= 2 && s.trainable;
    v.trainable = s.trainable;
    offset += v.numel;
    b.views_.push_back(std::move(v));
  }
  b.numel_ = offset;
  b.device_ = device;
  MT_ASSIGN_OR_RETURN(b.params_, Tensor::Zeros({offset}, DType::kF32, MemoryTag::kParams, device));
  return b;
}

bool ParamBlock::has_view(absl::string_view name) const {
  for (const ParamView& v : views_) {
    if (v.name == name) return true;
  }
  return false;
}

const ParamView& ParamBlock::view(absl::string_view name) const {
  for (const ParamView& v : views_) {
    if (v.name == name) return v;
  }
  MT_CHECK(false) << "block " << name_ << " has no parameter named " << name;
  __builtin_unreachable();
}

Tensor ParamBlock::param(absl::string_view name) const {
  const ParamView& v = view(name);
  return params_.View(v.offset, v.shape);
}

Tensor ParamBlock::grad(absl::string_view name) const {
  MT_CHECK(grads_.defined()) << "block " << name_
                             << " has no gradients yet: call EnsureGrads (the engine's "
                                "Backward does) before reading them";
  const ParamView& v = view(name);
  return grads_.View(v.offset, v.shape);
}

absl::Status ParamBlock::EnsureGrads() {
  if (grads_.defined() || numel_ == 0 || !backed_) return absl::OkStatus();
  MT_ASSIGN_OR_RETURN(grads_, Tensor::Zeros({numel_}, DType::kF32, MemoryTag::kGrads, device()));
  return absl::OkStatus();
}

void ParamBlock::ReleaseGrads() {
  while (grads_bound()) UnbindGrads();
  grads_ = Tensor();
}

void ParamBlock::ReleaseStorage() {
  MT_CHECK(!params_bound() && !grads_bound())
      << "block " << name_ << ": ReleaseStorage with storage bound; unbind it first";
  params_ = Tensor();
  grads_ = Tensor();
  backed_ = false;
}

absl::Status ParamBlock::AdoptParams(Tensor params) {
  MT_RETURN_IF_ERROR(CheckStorage(params, "params"));
  MT_CHECK(!params_bound()) << "block " << name_ << ": AdoptParams with params bound";
  params_ = std::move(params);
  backed_ = true;
  return absl::OkStatus();
}

absl::Status ParamBlock::CheckStorage(const Tensor& t, const char* what) const {
  if (t.dtype() != DType::kF32 || t.numel() != numel_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block %s: cannot bind %s to %s; it needs f32 storage of %d elements",
                        name_, what, t.DebugString(), numel_));
  }
  return absl::OkStatus();
}

absl::Status ParamBlock::BindParams(Tensor storage) {
  MT_RETURN_IF_ERROR(CheckStorage(storage, "params"));
  params_stack_.push_back(std::move(params_));
  params_ = std::move(storage);
  return absl::OkStatus();
}

void ParamBlock::UnbindParams() {
  if (params_stack_.empty()) return;
  params_ = std::move(params_stack_.back());
  params_stack_.pop_back();
}

absl::Status ParamBlock::BindGrads(Tensor storage) {
  MT_RETURN_IF_ERROR(CheckStorage(storage, "grads"));
  grads_stack_.push_back(std::move(grads_));
  grads_ = std::move(storage);
  return absl::OkStatus();
}

void ParamBlock::UnbindGrads() {
  if (grads_stack_.empty()) return;
  grads_ = std::move(grads_stack_.back());
  grads_stack_.pop_back();
}

absl::Status ParamBlock::SetMask(Tensor mask) {
  if (mask.dtype() != DType::kU8 || mask.numel() != numel_ || !(mask.device() == device())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "block %s: the mask is %s; it must be u8 with one byte per parameter (%d) on %s (1 = "
        "keep, 0 = pruned)",
        name_, mask.DebugString(), numel_, device().ToString()));
  }
  mask_ = std::move(mask);
  ApplyMask();
  return absl::OkStatus();
}

void ParamBlock::ApplyMask() const {
  if (!mask_.defined() || numel_ == 0) return;
  BackendFor(device()).ApplyMask(ExecContext::For(device()), params_.f32(),
                                 static_cast<const uint8_t*>(mask_.raw()), numel_);
}

absl::StatusOr<BlockBuffer> BlockBuffer::Like(const ParamBlock& block, DType dtype, MemoryTag tag) {
  return Like(block, dtype, tag, block.device());
}

absl::StatusOr<BlockBuffer> BlockBuffer::Like(const ParamBlock& block, DType dtype, MemoryTag tag,
                                              Device device) {
  if (dtype != DType::kF32 && dtype != DType::kF64) {
    return absl::InvalidArgumentError(
        absl::StrFormat("BlockBuffer for %s: dtype %s; use f32 (copies) or f64 (sums)",
                        block.name(), DTypeName(dtype)));
  }
  BlockBuffer b;
  MT_ASSIGN_OR_RETURN(b.data_, Tensor::Zeros({block.numel()}, dtype, tag, device));
  b.views_ = block.views();
  return b;
}

Tensor BlockBuffer::view(absl::string_view name) const {
  for (const ParamView& v : views_) {
    if (v.name == name) return data_.View(v.offset, v.shape);
  }
  MT_CHECK(false) << "buffer has no parameter named " << name;
  __builtin_unreachable();
}

void BlockBuffer::Axpy(float alpha, const Tensor& x) const {
  MT_CHECK(data_.dtype() == DType::kF32 && x.dtype() == DType::kF32 && x.numel() == numel());
  BackendFor(data_.device())
      .Axpy(ExecContext::For(data_.device()), data_.f32(), alpha, x.f32(), numel());
}

void BlockBuffer::AddWeighted(double w, const Tensor& x) const {
  MT_CHECK(data_.dtype() == DType::kF64 && x.dtype() == DType::kF32 && x.numel() == numel() &&
           data_.device().type == DeviceType::kCpu && x.device().type == DeviceType::kCpu)
      << "AddWeighted needs an f64 host buffer and f32 host data";
  double* acc = static_cast<double*>(data_.raw());
  const float* src = x.f32();
  const int64_t n = numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) acc[i] += w * static_cast<double>(src[i]);
}

void BlockBuffer::WriteScaled(const Tensor& out, double scale) const {
  MT_CHECK(data_.dtype() == DType::kF64 && out.dtype() == DType::kF32 && out.numel() == numel() &&
           data_.device().type == DeviceType::kCpu && out.device().type == DeviceType::kCpu)
      << "WriteScaled needs an f64 host buffer and an f32 host output";
  const double* acc = static_cast<const double*>(data_.raw());
  float* dst = out.f32();
  const int64_t n = numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(acc[i] * scale);
}

}  // namespace memtrain::core
