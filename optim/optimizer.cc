#include "optim/optimizer.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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
  if (runner_ != nullptr) {
    runner_->RunStep(*this, grad_scale);
    return;
  }
  for (int s = 0; s < model_->num_stages(); ++s) StepBlock(s, grad_scale);
}

void Optimizer::StepBlock(int stage, float grad_scale) {
  const core::ParamBlock& b = model_->block(stage);
  if (b.numel() == 0) return;
  if (needs_grads() && !b.grads().defined()) return;  // no backward has reached this block
  BlockRange r{.stage = stage,
               .begin = 0,
               .count = b.numel(),
               .params = b.params().f32(),
               .grads = needs_grads() ? b.grads().f32() : nullptr,
               .state = {},
               .device = b.device()};
  for (const core::Tensor& t : state_[stage]) {
    MT_CHECK(t.defined()) << name() << ": block " << b.name()
                          << " has no optimizer state; AllocateState or BindState first";
    r.state.push_back(t.raw());
  }
  UpdateRange(r, grad_scale);
}

void Optimizer::StepRange(const BlockRange& r, float grad_scale) {
  MT_CHECK(r.stage >= 0 && r.stage < model_->num_stages() && r.begin >= 0 && r.count >= 0 &&
           r.begin + r.count <= model_->block(r.stage).numel() &&
           r.state.size() == state_names_.size() && (r.grads != nullptr || !needs_grads()))
      << name() << ": bad BlockRange for stage " << r.stage;
  if (r.count > 0) UpdateRange(r, grad_scale);
}

void Optimizer::DeclareState(std::vector<std::string> names, core::DType dtype) {
  state_names_ = std::move(names);
  state_dtype_ = dtype;
  state_.assign(model_->num_stages(), std::vector<core::Tensor>(state_names_.size()));
}

std::vector<std::pair<std::string, core::Tensor>> Optimizer::State(int stage) const {
  std::vector<std::pair<std::string, core::Tensor>> out;
  for (size_t j = 0; j < state_names_.size(); ++j)
    out.emplace_back(state_names_[j], state_[stage][j]);
  return out;
}

absl::Status Optimizer::AllocateState() {
  for (int s = 0; s < model_->num_stages(); ++s) {
    const core::ParamBlock& b = model_->block(s);
    for (core::Tensor& t : state_[s]) {
      if (t.defined()) continue;
      MT_ASSIGN_OR_RETURN(t, core::Tensor::Zeros({b.numel()}, state_dtype_,
                                                 core::MemoryTag::kOptimizer, b.device()));
    }
  }
  return absl::OkStatus();
}

void Optimizer::ReleaseState() {
  for (auto& per_stage : state_) {
    for (core::Tensor& t : per_stage) t = core::Tensor();
  }
}

absl::Status Optimizer::BindState(int stage, std::vector<core::Tensor> state) {
  const int64_t n = model_->block(stage).numel();
  if (state.size() != state_names_.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: BindState for block %d got %d tensors; it has %d (%s)", name(), stage,
                        state.size(), state_names_.size(), absl::StrJoin(state_names_, ", ")));
  }
  for (const core::Tensor& t : state) {
    if (t.numel() != n || t.dtype() != state_dtype_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: BindState for block %d got %s; the state needs %d elements of %s",
                          name(), stage, t.DebugString(), n, core::DTypeName(state_dtype_)));
    }
  }
  state_[stage] = std::move(state);
  return absl::OkStatus();
}

void Optimizer::UnbindState(int stage) {
  for (core::Tensor& t : state_[stage]) t = core::Tensor();
}

void Optimizer::Reset() {
  for (int s = 0; s < model_->num_stages(); ++s) {
    for (const auto& [name, t] : State(s)) {
      if (t.defined()) t.SetZero();
    }
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
