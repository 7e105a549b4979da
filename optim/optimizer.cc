#include "optim/optimizer.h"

#include <cmath>

#include "core/backend.h"
#include "core/kernels/cpu/ops.h"

namespace memtrain::optim {

bool DecayPolicy::Decays(const std::string& block, const core::ParamView& view) const {
  for (const std::string& n : no_decay) {
    if (n == view.name || n == block + "." + view.name) return false;
  }
  return view.decay || decay_1d;
}

void Optimizer::Step(float lr, float grad_scale) {
  BeginStep();
  for (int s = 0; s < model_->num_stages(); ++s) StepBlock(s, lr, grad_scale);
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
