#include "launcher/make_optimizer.h"

#include <limits>

#include "launcher/field_names.h"

namespace memtrain::launcher {

optim::AdamWConfig ToAdamWConfig(const AdamW& a) {
  return {.lr = a.lr(),
          .beta1 = a.beta1(),
          .beta2 = a.beta2(),
          .eps = a.eps(),
          .weight_decay = a.weight_decay(),
          .variant = a.variant() == AdamW::LLMC ? optim::AdamWVariant::kLlmc
                                                : optim::AdamWVariant::kPyTorch};
}

optim::LionConfig ToLionConfig(const Lion& l) {
  return {
      .lr = l.lr(),
      .beta1 = l.beta1(),
      .beta2 = l.beta2(),
      .weight_decay = l.weight_decay(),
      .direction = l.k() == Lion::TANH ? optim::LionDirection::kTanh : optim::LionDirection::kSign,
      .tau = l.tau(),
      .bf16_momentum = l.momentum_dtype() == Lion::BF16};
}

optim::SgdConfig ToSgdConfig(const Sgd& g) {
  return {.lr = g.lr(),
          .momentum = g.momentum(),
          .dampening = g.dampening(),
          .weight_decay = g.weight_decay(),
          .nesterov = g.nesterov()};
}

optim::ZoConfig ToZoConfig(const Zo& z) {
  return {.lr = z.lr(),
          .eps = z.eps(),
          .weight_decay = z.weight_decay(),
          .samples = z.samples(),
          .sign = z.sign(),
          .cache_noise = z.cache_noise()};
}

absl::Status ValidateOptimizerSpec(const Optimizer& spec) {
  if (spec.has_zo()) return ToJobSpecNames(ToZoConfig(spec.zo()).Validate());
  if (spec.has_lion()) return ToJobSpecNames(ToLionConfig(spec.lion()).Validate());
  if (spec.has_sgd()) return ToJobSpecNames(ToSgdConfig(spec.sgd()).Validate());
  return ToJobSpecNames(ToAdamWConfig(spec.adamw()).Validate());
}

absl::StatusOr<std::unique_ptr<optim::Optimizer>> MakeOptimizer(const Optimizer& spec,
                                                                core::Model* model,
                                                                optim::StateAllocation state) {
  optim::DecayPolicy decay{.decay_1d = spec.decay_1d(),
                           .no_decay = {spec.no_decay().begin(), spec.no_decay().end()}};
  absl::StatusOr<std::unique_ptr<optim::Optimizer>> opt;
  if (spec.has_zo()) {
    absl::StatusOr<std::unique_ptr<optim::ZoSgd>> zo =
        optim::ZoSgd::Create(model, ToZoConfig(spec.zo()), decay);
    if (!zo.ok()) return ToJobSpecNames(zo.status());
    return std::unique_ptr<optim::Optimizer>(std::move(*zo));
  }
  if (spec.has_lion()) {
    opt = optim::Lion::Create(model, ToLionConfig(spec.lion()), decay, state);
  } else if (spec.has_sgd()) {
    opt = optim::Sgd::Create(model, ToSgdConfig(spec.sgd()), decay, state);
  } else {
    opt = optim::AdamW::Create(model, ToAdamWConfig(spec.adamw()), decay, state);
  }
  if (!opt.ok()) return ToJobSpecNames(opt.status());
  return opt;
}

int64_t OptimizerStateBytes(const Optimizer& spec, int64_t num_parameters) {
  int64_t per_param = 8;  // AdamW: m, v
  if (spec.has_lion()) per_param = spec.lion().momentum_dtype() == Lion::BF16 ? 2 : 4;
  if (spec.has_sgd()) per_param = spec.sgd().momentum() != 0.0f ? 4 : 0;
  if (spec.has_zo()) per_param = 0;  // no state (its block-sized scratch counts as kScratch)
  // Saturating: an absurd model gives a huge number, never a negative one.
  if (num_parameters > std::numeric_limits<int64_t>::max() / 8) {
    return per_param == 0 ? 0 : std::numeric_limits<int64_t>::max();
  }
  return per_param * num_parameters;
}

float PeakLr(const Optimizer& spec) {
  if (spec.has_lion()) return spec.lion().lr();
  if (spec.has_sgd()) return spec.sgd().lr();
  if (spec.has_zo()) return spec.zo().lr();
  return spec.adamw().lr();
}

}  // namespace memtrain::launcher
