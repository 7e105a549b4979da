#include "optim/zo.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/philox.h"

namespace memtrain::optim {
namespace {

constexpr uint64_t kStepSeedStream = 0x5a4f5a4f;  // "ZOZO": the stream of the step seeds

// The scratch a stage's binding needs: slot 0 the larger of its own block and the block it also
// reads, slot 1 the smaller; sized to the largest need of any stage (for GPT-2: the embedding in
// slot 0, at the embedding stage and again at the head, and the head's own small block in slot 1).
std::array<int64_t, 2> ScratchSizes(core::Model* model) {
  std::array<int64_t, 2> size{1, 1};
  for (int s = 0; s < model->num_stages(); ++s) {
    int64_t own = model->block(s).numel(), other = 0;
    for (int b : model->extra_blocks(s)) other = std::max(other, model->block(b).numel());
    size[0] = std::max(size[0], std::max(own, other));
    size[1] = std::max(size[1], std::min(own, other));
  }
  return size;
}

}  // namespace

absl::Status ZoConfig::Validate() const {
  auto bad = [](const char* field, float v, const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("ZoConfig::", field, " = ", v, ": ", why));
  };
  if (!(std::isfinite(lr) && lr >= 0)) {
    return bad("lr", lr, "must be >= 0 and finite (MeZO fine-tunes with 1e-7 to 1e-5)");
  }
  if (!(std::isfinite(eps) && eps > 0)) {
    return bad("eps", eps, "must be > 0 and finite (MeZO uses 1e-3)");
  }
  if (!(std::isfinite(weight_decay) && weight_decay >= 0)) {
    return bad("weight_decay", weight_decay, "must be >= 0 (0 turns weight decay off)");
  }
  if (samples < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ZoConfig::samples = %d: must be >= 1 (directions per step; 2 forward lanes each)",
        samples));
  }
  return absl::OkStatus();
}

uint64_t ZoStepSeed(uint64_t seed, int64_t step) {
  const core::PhiloxCounter c =
      core::PhiloxBlock(seed, kStepSeedStream, static_cast<uint64_t>(step));
  return (static_cast<uint64_t>(c[1]) << 32) | c[0];
}

// ---- ZoPerturbation ------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ZoPerturbation>> ZoPerturbation::Create(core::Model* model,
                                                                       bool cache_noise) {
  if (model == nullptr) return absl::InvalidArgumentError("ZoPerturbation: the model is null");
  std::unique_ptr<ZoPerturbation> p(new ZoPerturbation(model));
  p->cache_noise_ = cache_noise;
  const std::array<int64_t, 2> size = ScratchSizes(model);
  for (int k = 0; k < 2; ++k) {
    MT_ASSIGN_OR_RETURN(p->scratch_[k],
                        core::Tensor::Empty({size[k]}, core::DType::kF32, core::MemoryTag::kScratch,
                                            model->block(0).device()));
  }
  return p;
}

absl::Status ZoPerturbation::Bind(core::ParamBlock& block, int slot, int lane,
                                  const core::ExecContext& ctx) {
  const int64_t n = block.numel();
  if (n == 0) return absl::OkStatus();
  core::Backend& be = core::BackendFor(block.device());
  core::Tensor view = scratch_[slot].View(0, {n});
  // scratch = theta + s*eps*z in one rounding (fmaf), the noise drawn on the fly, or for the -
  // lane of a sample taken from the + lane's draw: the same bits. The weights themselves are
  // never written.
  const int global = first_ + lane * stride_;
  const int sample = global / 2;
  const float scale = (global % 2 == 0) ? eps_ : -eps_;
  const uint64_t stream = ZoStream(block.id(), sample);
  Cached& c = cached_[slot];
  if (noise_[slot].defined() && global % 2 == 0) {
    // z exactly (-0.0 as the addend keeps the sign of a zero).
    be.FillNormal(ctx, noise_[slot].f32(), n, seed_, stream, 0, -0.0f, 1.0f);
    c = {.valid = true, .block = block.id(), .sample = sample, .seed = seed_};
    be.Fma(ctx, view.f32(), scale, noise_[slot].f32(), block.params().f32(), n);
  } else if (noise_[slot].defined() && c.valid && c.block == block.id() && c.sample == sample &&
             c.seed == seed_) {
    be.Fma(ctx, view.f32(), scale, noise_[slot].f32(), block.params().f32(), n);
    c.valid = false;
  } else {
    be.AddNormal(ctx, view.f32(), block.params().f32(), n, seed_, stream, 0, scale);
  }
  MT_RETURN_IF_ERROR(block.BindParams(view));
  bound_.push_back(&block);
  return absl::OkStatus();
}

absl::Status ZoPerturbation::Set(uint64_t step_seed, float eps, int first, int stride) {
  seed_ = step_seed;
  eps_ = eps;
  first_ = first;
  stride_ = stride;
  cached_[0].valid = cached_[1].valid = false;
  // Only a rank that runs both lanes of a sample (stride 1) has a use for the cache.
  if (stride != 1) {
    noise_[0] = noise_[1] = core::Tensor();
  } else if (cache_noise_ && !noise_[0].defined()) {
    for (int k = 0; k < 2; ++k) {
      MT_ASSIGN_OR_RETURN(noise_[k],
                          core::Tensor::Empty({scratch_[k].numel()}, core::DType::kF32,
                                              core::MemoryTag::kScratch, scratch_[k].device()));
    }
  }
  return absl::OkStatus();
}

absl::Status ZoPerturbation::BeforeForward(const core::StageEvent& e) {
  if (e.pass != core::Pass::kLaneForward) return absl::OkStatus();
  if (e.extra.size() > 1) {
    return absl::UnimplementedError(
        absl::StrFormat("ZoPerturbation: stage %d reads %d other blocks; one is supported", e.stage,
                        e.extra.size()));
  }
  // The larger block takes slot 0 (see ScratchSizes).
  core::ParamBlock* own = e.block;
  core::ParamBlock* other = e.extra.empty() ? nullptr : &model_->block(e.extra[0]);
  if (other != nullptr && other->numel() > own->numel()) std::swap(own, other);
  MT_RETURN_IF_ERROR(Bind(*own, 0, e.lane, *e.ctx));
  if (other != nullptr) MT_RETURN_IF_ERROR(Bind(*other, 1, e.lane, *e.ctx));
  return absl::OkStatus();
}

absl::Status ZoPerturbation::AfterForward(const core::StageEvent& e) {
  for (core::ParamBlock* b : bound_) b->UnbindParams();
  bound_.clear();
  return absl::OkStatus();
}

// ---- ZoSgd ------------------------------------------------------------------------------

double ZoStepResult::loss() const {
  double s = 0;
  for (size_t i = 0; i < loss_plus.size(); ++i) s += 0.5 * (loss_plus[i] + loss_minus[i]);
  return loss_plus.empty() ? 0.0 : s / static_cast<double>(loss_plus.size());
}

absl::StatusOr<std::unique_ptr<ZoSgd>> ZoSgd::Create(core::Model* model, ZoConfig config,
                                                     DecayPolicy decay) {
  MT_RETURN_IF_ERROR(CheckModel(model));
  MT_RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<ZoSgd> zo(new ZoSgd(model, config, std::move(decay)));
  MT_ASSIGN_OR_RETURN(zo->perturb_, ZoPerturbation::Create(model, config.cache_noise));
  return zo;
}

ZoSgd::~ZoSgd() = default;

absl::StatusOr<ZoStepResult> ZoSgd::Step(core::Engine& engine, const core::Batch& batch,
                                         uint64_t step_seed) {
  MT_ASSIGN_OR_RETURN(std::vector<double> losses, MeasureLanes(engine, batch, step_seed));
  return Finish(step_seed, losses);
}

void ZoSgd::set_lanes(int first, int stride) {
  first_lane_ = first;
  lane_stride_ = std::max(1, stride);
  perturb_->Set(0, config_.eps, first_lane_, lane_stride_).IgnoreError();  // drops an unused cache
}

int ZoSgd::local_lanes() const {
  int n = 0;
  for (int l = first_lane_; l < 2 * config_.samples; l += lane_stride_) ++n;
  return n;
}

absl::StatusOr<std::vector<double>> ZoSgd::MeasureLanes(core::Engine& engine,
                                                        const core::Batch& batch,
                                                        uint64_t step_seed) {
  const int q = config_.samples, local = local_lanes();
  const core::PrepareOptions& p = model_->prepared();
  if (local < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ZoSgd: lane %d of stride %d leaves this rank no lane of the %d (2 per sample); use at "
        "most 2 * samples perturbation ranks",
        first_lane_, lane_stride_, 2 * q));
  }
  if (p.mode != core::ModelMode::kForwardOnly || p.lanes < local) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "ZoSgd::Step runs %d lane(s) here and needs the model prepared kForwardOnly with that "
        "many; it was prepared %s with %d",
        local, core::ModelModeName(p.mode), p.lanes));
  }
  if (batch.targets == nullptr) {
    return absl::InvalidArgumentError("ZoSgd::Step needs a batch with targets (the loss)");
  }
  MT_RETURN_IF_ERROR(perturb_->Set(step_seed, config_.eps, first_lane_, lane_stride_));
  engine.AddHooks(perturb_.get());
  const std::vector<core::Batch> lanes(local, batch);
  absl::Status ran = engine.ForwardLanes(lanes);
  engine.RemoveHooks(perturb_.get());
  MT_RETURN_IF_ERROR(ran);
  std::vector<double> losses(2 * q, 0.0);
  for (int k = 0; k < local; ++k) losses[first_lane_ + k * lane_stride_] = model_->Loss(k);
  return losses;
}

ZoStepResult ZoSgd::Finish(uint64_t step_seed, const std::vector<double>& lane_losses) {
  ZoStepResult r;
  bool finite = true;
  for (int i = 0; i < config_.samples; ++i) {
    const double lp = lane_losses[2 * i], lm = lane_losses[2 * i + 1];
    r.loss_plus.push_back(lp);
    r.loss_minus.push_back(lm);
    r.projected_grad.push_back((lp - lm) / (2.0 * static_cast<double>(config_.eps)));
    finite = finite && std::isfinite(lp) && std::isfinite(lm);
  }
  seed_ = step_seed;
  g_ = r.projected_grad;
  if (finite) Optimizer::Step();
  return r;
}

void ZoSgd::UpdateRange(const BlockRange& r, float) {
  const double lr = lr_;
  if (lr == 0.0 || g_.empty()) return;
  const core::ParamBlock& b = model_->block(r.stage);
  core::Backend& be = core::BackendFor(r.device);
  const core::ExecContext ctx = ContextFor(r.device);
  float* theta = r.params;
  // theta -= lr * wd * theta on the decayed views (the old theta: before the noise terms).
  if (config_.weight_decay > 0) {
    const float a = static_cast<float>(-lr * config_.weight_decay);
    ForEachDecayRange(r.stage, r.begin, r.begin + r.count,
                      [&](int64_t off, int64_t count, bool decay) {
                        const int64_t i = off - r.begin;
                        if (decay) be.Axpy(ctx, theta + i, a, theta + i, count);
                      });
  }
  // theta -= lr / q * sum_i c_i z_i, c_i = g_i or sign(g_i); z regenerated per sample, on the fly
  // (element e of the block draws index e of its stream, whatever range holds it).
  const int q = static_cast<int>(g_.size());
  for (int i = 0; i < q; ++i) {
    const double c = config_.sign ? static_cast<double>((g_[i] > 0) - (g_[i] < 0)) : g_[i];
    if (c == 0.0) continue;
    be.AddNormal(ctx, theta, theta, r.count, seed_, ZoStream(b.id(), i),
                 static_cast<uint64_t>(r.begin), static_cast<float>(-lr * c / q));
  }
  if (b.has_mask()) {
    be.ApplyMask(ctx, theta, static_cast<const uint8_t*>(b.mask().raw()) + r.begin, r.count);
  }
}

}  // namespace memtrain::optim
