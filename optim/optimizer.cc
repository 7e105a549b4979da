#include "optim/optimizer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::optim {

bool DecayPolicy::Decays(const std::string& block, const core::ParamView& view) const {
  for (const std::string& n : no_decay) {
    if (n == view.name || n == block + "." + view.name) return false;
  }
  return view.decay || decay_1d;
}

absl::Status Optimizer::set_lr(float lr) {
  if (!(std::isfinite(lr) && lr >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s set_lr(%s): the learning rate must be >= 0 and finite; it stays %s",
                        name(), absl::StrCat(lr), absl::StrCat(lr_)));
  }
  lr_ = lr;
  return absl::OkStatus();
}

void Optimizer::Step(float grad_scale) {
  BeginStep();
  for (int s = 0; s < model_->num_stages(); ++s) StepBlock(s, grad_scale);
}

void Optimizer::Reset() {
  for (int s = 0; s < model_->num_stages(); ++s) {
    for (const auto& [name, t] : State(s)) t.SetZero();
  }
  step_ = 0;
}

absl::Status Optimizer::CheckModel(const core::Model* model) {
  if (model != nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError("the model is null; pass the model whose blocks to update");
}

const uint8_t* Optimizer::Mask(int stage) const {
  const core::ParamBlock& b = model_->block(stage);
  return b.has_mask() ? static_cast<const uint8_t*>(b.mask().raw()) : nullptr;
}

int64_t Optimizer::state_bytes() const {
  int64_t n = 0;
  for (int s = 0; s < model_->num_stages(); ++s) {
    for (const auto& [name, t] : State(s)) n += t.nbytes();
  }
  return n;
}

absl::StatusOr<std::vector<core::Tensor>> Optimizer::ZeroState(core::DType dtype) const {
  std::vector<core::Tensor> out;
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    MT_ASSIGN_OR_RETURN(
        core::Tensor t,
        core::Tensor::Zeros({b.numel()}, dtype, core::MemoryTag::kOptimizer, b.device()));
    out.push_back(std::move(t));
  }
  return out;
}

double GlobalGradNorm(core::Model& model) {
  double sum = 0.0;
  for (int s = 0; s < model.num_stages(); ++s) {
    const core::Tensor& g = model.block(s).grads();
    if (!g.defined()) continue;  // no backward has touched this block
    sum += core::BackendFor(g.device())
               .SquaredNorm(core::ExecContext::For(g.device()), g.f32(), g.numel());
  }
  return std::sqrt(sum);
}

float ClipScale(double norm, float max_norm) {
  if (max_norm <= 0.0f || !(norm > max_norm)) return 1.0f;
  return static_cast<float>(max_norm / (norm + 1e-6));
}

}  // namespace memtrain::optim
