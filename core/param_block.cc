#include "core/param_block.h"

#include "absl/strings/str_format.h"

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
    v.decay = s.shape.size() >= 2;
    offset += v.numel;
    b.views_.push_back(std::move(v));
  }
  MT_ASSIGN_OR_RETURN(b.params_, Tensor::Zeros({offset}, DType::kF32, MemoryTag::kParams, device));
  MT_ASSIGN_OR_RETURN(b.grads_, Tensor::Zeros({offset}, DType::kF32, MemoryTag::kGrads, device));
  return b;
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
  const ParamView& v = view(name);
  return grads_.View(v.offset, v.shape);
}

absl::Status ParamBlock::SetMask(Tensor mask) {
  if (mask.dtype() != DType::kU8 || mask.numel() != numel() || !(mask.device() == device())) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "mask for block %s is %s (%d elements, %s); it must be u8 with one byte per parameter "
        "(%d) on %s",
        name_, DTypeName(mask.dtype()), mask.numel(), mask.device().ToString(), numel(),
        device().ToString()));
  }
  if (device().type != DeviceType::kCpu) {
    return absl::UnimplementedError("masks are implemented for CPU blocks only");
  }
  const uint8_t* keep = static_cast<const uint8_t*>(mask.raw());
  float* p = params_.f32();
  const int64_t n = numel();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = keep[i] != 0 ? p[i] : 0.0f;
  mask_ = std::move(mask);
  return absl::OkStatus();
}

void ParamBlock::ClearMask() {
  static const Tensor kNone;  // copied, not moved from a temporary: gcc 12 warns falsely there
  mask_ = kNone;
}

}  // namespace memtrain::core
