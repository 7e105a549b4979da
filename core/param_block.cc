#include "core/param_block.h"

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

}  // namespace memtrain::core
