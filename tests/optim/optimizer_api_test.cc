// The optimizer API: config validation in Create, the one learning rate (lr() / set_lr / Step),
// Reset, and pruning masks (masked weights stay exactly 0 under every optimizer).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/model/gpt2.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "tests/core/test_util.h"

namespace memtrain::optim {
namespace {

using memtrain::testing::RandomFloats;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::unique_ptr<core::GPT2> TinyModel() {
  auto model = core::GPT2::Create(
                   {.max_seq_len = 8, .vocab_size = 16, .n_layer = 2, .n_head = 2, .n_embd = 8})
                   .value();
  model->InitWeights(1);
  return model;
}

void FillGrads(core::Model& model, uint32_t seed) {
  for (int s = 0; s < model.num_stages(); ++s) {
    EXPECT_TRUE(model.block(s).EnsureGrads().ok());  // gradients are allocated lazily
    const core::Tensor& g = model.block(s).grads();
    auto r = RandomFloats(g.numel(), seed * 100 + s);
    std::copy(r.begin(), r.end(), g.f32());
  }
}

void CopyParams(core::Model& from, core::Model& to) {
  for (int s = 0; s < from.num_stages(); ++s) {
    const core::Tensor& a = from.block(s).params();
    std::memcpy(to.block(s).params().raw(), a.raw(), a.nbytes());
  }
}

::testing::AssertionResult SameBits(const core::Tensor& a, const core::Tensor& b) {
  if (a.nbytes() != b.nbytes()) return ::testing::AssertionFailure() << "sizes differ";
  const uint8_t* x = static_cast<const uint8_t*>(a.raw());
  const uint8_t* y = static_cast<const uint8_t*>(b.raw());
  for (size_t i = 0; i < a.nbytes(); ++i) {
    if (x[i] != y[i]) return ::testing::AssertionFailure() << "first difference at byte " << i;
  }
  return ::testing::AssertionSuccess();
}

// Every optimizer and variant, by name, created over a model.
struct Kind {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<Optimizer>>(core::Model*)> create;
};

std::vector<Kind> AllKinds() {
  return {
      {"adamw",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return AdamW::Create(m, {.lr = 1e-2f, .weight_decay = 0.1f});
       }},
      {"adamw_llmc",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return AdamW::Create(m,
                              {.lr = 1e-2f, .weight_decay = 0.1f, .variant = AdamWVariant::kLlmc});
       }},
      {"lion",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Lion::Create(m, {.lr = 1e-2f, .weight_decay = 0.3f});
       }},
      {"lion_bf16",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Lion::Create(m, {.lr = 1e-2f, .weight_decay = 0.3f, .bf16_momentum = true});
       }},
      {"lion_tanh",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Lion::Create(
             m,
             {.lr = 1e-2f, .weight_decay = 0.3f, .direction = LionDirection::kTanh, .tau = 0.1f});
       }},
      {"sgd",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Sgd::Create(m, {.lr = 0.1f, .weight_decay = 0.01f});
       }},
      {"sgd_momentum",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Sgd::Create(
             m, {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.1f, .weight_decay = 0.01f});
       }},
      {"sgd_nesterov",
       [](core::Model* m) -> absl::StatusOr<std::unique_ptr<Optimizer>> {
         return Sgd::Create(
             m, {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f, .nesterov = true});
       }},
  };
}

// ---- validation ---------------------------------------------------------------------------------

void ExpectInvalid(const absl::Status& s, const std::string& want) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(want), std::string::npos) << "want \"" << want << "\" in " << s;
}

TEST(ConfigTest, DefaultsAreValid) {
  EXPECT_TRUE(AdamWConfig{}.Validate().ok());
  EXPECT_TRUE(LionConfig{}.Validate().ok());
  EXPECT_TRUE(SgdConfig{}.Validate().ok());
  EXPECT_TRUE(
      (LionConfig{.direction = LionDirection::kTanh, .bf16_momentum = true}).Validate().ok());
  EXPECT_TRUE((SgdConfig{.momentum = 0.9f, .nesterov = true}).Validate().ok());
}

TEST(ConfigTest, EveryFieldIsCheckedAndNamed) {
  ExpectInvalid(AdamWConfig{.lr = -1}.Validate(), "AdamWConfig::lr = -1: must be > 0");
  ExpectInvalid(AdamWConfig{.lr = 0}.Validate(), "AdamWConfig::lr = 0: must be > 0");
  ExpectInvalid(AdamWConfig{.lr = kNaN}.Validate(), "AdamWConfig::lr = nan: must be > 0");
  ExpectInvalid(AdamWConfig{.lr = kInf}.Validate(), "AdamWConfig::lr = inf: must be > 0");
  ExpectInvalid(AdamWConfig{.beta1 = 1}.Validate(), "AdamWConfig::beta1 = 1: must be in [0, 1)");
  ExpectInvalid(AdamWConfig{.beta2 = -0.5f}.Validate(),
                "AdamWConfig::beta2 = -0.5: must be in [0, 1)");
  ExpectInvalid(AdamWConfig{.eps = 0}.Validate(), "AdamWConfig::eps = 0: must be > 0");
  ExpectInvalid(AdamWConfig{.weight_decay = -0.1f}.Validate(),
                "AdamWConfig::weight_decay = -0.1: must be >= 0");
  ExpectInvalid(AdamWConfig{.variant = static_cast<AdamWVariant>(7)}.Validate(),
                "AdamWConfig::variant = 7");

  ExpectInvalid(LionConfig{.lr = -1e-4f}.Validate(), "LionConfig::lr = -0.0001: must be > 0");
  ExpectInvalid(LionConfig{.beta1 = kNaN}.Validate(), "LionConfig::beta1 = nan: must be in [0, 1)");
  ExpectInvalid(LionConfig{.beta2 = 1}.Validate(), "LionConfig::beta2 = 1: must be in [0, 1)");
  ExpectInvalid(LionConfig{.weight_decay = kInf}.Validate(), "LionConfig::weight_decay = inf");
  ExpectInvalid(LionConfig{.direction = static_cast<LionDirection>(3)}.Validate(),
                "LionConfig::direction = 3");
  ExpectInvalid(LionConfig{.tau = 0}.Validate(), "LionConfig::tau = 0: must be > 0");

  ExpectInvalid(SgdConfig{.lr = -1}.Validate(), "SgdConfig::lr = -1: must be > 0");
  ExpectInvalid(SgdConfig{.momentum = 1}.Validate(), "SgdConfig::momentum = 1: must be in [0, 1)");
  ExpectInvalid(SgdConfig{.dampening = 1.5f}.Validate(), "SgdConfig::dampening = 1.5");
  ExpectInvalid(SgdConfig{.weight_decay = -1}.Validate(), "SgdConfig::weight_decay = -1");
  ExpectInvalid(SgdConfig{.nesterov = true}.Validate(),
                "SgdConfig::nesterov = true: Nesterov momentum needs momentum > 0");
  ExpectInvalid((SgdConfig{.momentum = 0.9f, .dampening = 0.1f, .nesterov = true}).Validate(),
                "Nesterov momentum needs momentum > 0 and dampening = 0");
}

TEST(ConfigTest, CreateRefusesWhatValidateRefuses) {
  auto model = TinyModel();
  const AdamWConfig bad_adamw{.lr = -1};
  auto a = AdamW::Create(model.get(), bad_adamw);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status(), bad_adamw.Validate());
  const LionConfig bad_lion{.tau = -1};
  auto l = Lion::Create(model.get(), bad_lion);
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status(), bad_lion.Validate());
  const SgdConfig bad_sgd{.nesterov = true};
  auto s = Sgd::Create(model.get(), bad_sgd);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status(), bad_sgd.Validate());
  ExpectInvalid(AdamW::Create(nullptr, {}).status(), "model is null");
  // The config is kept as given.
  auto ok = Lion::Create(model.get(), {.lr = 3e-4f, .beta2 = 0.98f}).value();
  EXPECT_EQ(ok->config().beta2, 0.98f);
}

// ---- the learning rate --------------------------------------------------------------------------

TEST(LearningRateTest, StartsAtTheConfigAndSetLrIsValidated) {
  auto model = TinyModel();
  auto opt = AdamW::Create(model.get(), {.lr = 3e-4f}).value();
  EXPECT_EQ(opt->lr(), 3e-4f);
  EXPECT_TRUE(opt->set_lr(1e-3f).ok());
  EXPECT_EQ(opt->lr(), 1e-3f);
  EXPECT_TRUE(opt->set_lr(0.0f).ok());  // a schedule may end at 0
  EXPECT_EQ(opt->lr(), 0.0f);
  ASSERT_TRUE(opt->set_lr(1e-3f).ok());
  for (float bad : {-1e-4f, kNaN, kInf, -kInf}) {
    ExpectInvalid(opt->set_lr(bad), "must be >= 0 and finite");
    EXPECT_EQ(opt->lr(), 1e-3f) << "a refused value leaves lr() as it was";
  }
  EXPECT_EQ(opt->config().lr, 3e-4f);  // the config is not rewritten
}

TEST(LearningRateTest, StepUsesLrAndSetLrActsFromTheNextStep) {
  // Plain SGD: theta -= lr * g, so every step shows the lr it used.
  auto a = TinyModel(), b = TinyModel();
  auto oa = Sgd::Create(a.get(), {.lr = 0.5f}).value();
  auto ob = Sgd::Create(b.get(), {.lr = 0.25f}).value();
  ASSERT_TRUE(ob->set_lr(0.5f).ok());  // the same as creating it with 0.5
  const std::vector<float> lrs = {0.5f, 0.1f, 0.0f, 0.3f};
  for (size_t k = 0; k < lrs.size(); ++k) {
    FillGrads(*a, k + 1);
    FillGrads(*b, k + 1);
    ASSERT_TRUE(oa->set_lr(lrs[k]).ok());
    ASSERT_TRUE(ob->set_lr(lrs[k]).ok());
    std::vector<std::vector<float>> before;
    for (int s = 0; s < a->num_stages(); ++s) {
      const core::Tensor& p = a->block(s).params();
      before.emplace_back(p.f32(), p.f32() + p.numel());
    }
    oa->Step();
    ob->Step();
    for (int s = 0; s < a->num_stages(); ++s) {
      const core::Tensor& p = a->block(s).params();
      const core::Tensor& g = a->block(s).grads();
      ASSERT_TRUE(SameBits(p, b->block(s).params()));
      for (int64_t i = 0; i < p.numel(); ++i) {
        ASSERT_FLOAT_EQ(p.f32()[i], before[s][i] - lrs[k] * g.f32()[i]) << "step " << k;
      }
    }
  }
  EXPECT_EQ(oa->step(), 4);
}

// ---- Reset --------------------------------------------------------------------------------------

TEST(ResetTest, AfterResetStepsMatchAFreshOptimizer) {
  for (const Kind& kind : AllKinds()) {
    SCOPED_TRACE(kind.name);
    auto a = TinyModel();
    auto oa = kind.create(a.get()).value();
    for (int k = 0; k < 3; ++k) {  // a round of training builds up state
      FillGrads(*a, 10 + k);
      oa->Step();
    }
    std::vector<const void*> storage;
    for (int s = 0; s < a->num_stages(); ++s) {
      for (const auto& [name, t] : oa->State(s)) storage.push_back(t.raw());
    }
    oa->Reset();
    EXPECT_EQ(oa->step(), 0);
    size_t k = 0;
    for (int s = 0; s < a->num_stages(); ++s) {
      for (const auto& [name, t] : oa->State(s)) {
        EXPECT_EQ(t.raw(), storage[k++]) << "Reset must not reallocate " << name;
        const uint8_t* bytes = static_cast<const uint8_t*>(t.raw());
        for (size_t i = 0; i < t.nbytes(); ++i) ASSERT_EQ(bytes[i], 0) << name;
      }
    }
    // A fresh optimizer over a copy of the same parameters: the same steps, bit for bit.
    auto b = TinyModel();
    CopyParams(*a, *b);
    auto ob = kind.create(b.get()).value();
    for (int step = 0; step < 3; ++step) {
      FillGrads(*a, 20 + step);
      FillGrads(*b, 20 + step);
      oa->Step(0.5f);
      ob->Step(0.5f);
    }
    EXPECT_EQ(oa->step(), ob->step());
    for (int s = 0; s < a->num_stages(); ++s) {
      ASSERT_TRUE(SameBits(a->block(s).params(), b->block(s).params())) << "stage " << s;
      auto sa = oa->State(s), sb = ob->State(s);
      ASSERT_EQ(sa.size(), sb.size());
      for (size_t i = 0; i < sa.size(); ++i) {
        ASSERT_TRUE(SameBits(sa[i].second, sb[i].second)) << sa[i].first;
      }
    }
  }
}

TEST(ResetTest, KeepsTheLearningRate) {
  auto model = TinyModel();
  auto opt = Lion::Create(model.get(), {.lr = 1e-4f}).value();
  ASSERT_TRUE(opt->set_lr(5e-5f).ok());
  opt->Reset();
  EXPECT_EQ(opt->lr(), 5e-5f);
}

// ---- masks --------------------------------------------------------------------------------------

core::Tensor RandomMask(int64_t n, uint32_t seed, double keep = 0.7) {
  core::Tensor m = core::Tensor::Zeros({n}, core::DType::kU8, core::MemoryTag::kParams).value();
  std::mt19937 rng(seed);
  std::bernoulli_distribution d(keep);
  uint8_t* p = static_cast<uint8_t*>(m.raw());
  for (int64_t i = 0; i < n; ++i) p[i] = d(rng) ? 1 : 0;
  return m;
}

TEST(MaskTest, SetMaskChecksAndZeroesThePrunedWeights) {
  auto model = TinyModel();
  core::ParamBlock& b = model->block(1);
  EXPECT_FALSE(b.has_mask());
  EXPECT_FALSE(b.mask().defined());
  auto wrong_type = core::Tensor::Zeros({b.numel()}, core::DType::kF32, core::MemoryTag::kParams);
  ExpectInvalid(b.SetMask(*wrong_type), "must be u8");
  ExpectInvalid(b.SetMask(RandomMask(b.numel() - 1, 1)), "one byte per parameter");
  ExpectInvalid(b.SetMask(core::Tensor()), "must be u8");
  EXPECT_FALSE(b.has_mask());

  std::vector<float> before(b.params().f32(), b.params().f32() + b.numel());
  core::Tensor mask = RandomMask(b.numel(), 2);
  ASSERT_TRUE(b.SetMask(mask).ok());
  EXPECT_TRUE(b.has_mask());
  EXPECT_EQ(b.mask().raw(), mask.raw());
  const uint8_t* keep = static_cast<const uint8_t*>(mask.raw());
  for (int64_t i = 0; i < b.numel(); ++i) {
    ASSERT_EQ(b.params().f32()[i], keep[i] ? before[i] : 0.0f) << i;
  }
  b.ClearMask();
  EXPECT_FALSE(b.has_mask());
  EXPECT_FALSE(b.mask().defined());
}

// The optimizer honours the mask: pruned weights are exactly 0 after every step and their state
// stays 0; every other weight equals an independent run without a mask whose pruned weights are
// zeroed by hand after each step. One block is left unmasked.
TEST(MaskTest, MaskedWeightsStayZeroUnderEveryOptimizer) {
  for (const Kind& kind : AllKinds()) {
    SCOPED_TRACE(kind.name);
    auto a = TinyModel(), ref = TinyModel();
    std::vector<core::Tensor> masks(a->num_stages());
    for (int s = 0; s < a->num_stages(); ++s) {
      if (s == 1) continue;  // unmasked
      masks[s] = RandomMask(a->block(s).numel(), 50 + s);
      ASSERT_TRUE(a->block(s).SetMask(masks[s]).ok());
    }
    auto zero_by_hand = [&](core::Model& m) {
      for (int s = 0; s < m.num_stages(); ++s) {
        if (!masks[s].defined()) continue;
        const uint8_t* keep = static_cast<const uint8_t*>(masks[s].raw());
        float* p = m.block(s).params().f32();
        for (int64_t i = 0; i < masks[s].numel(); ++i) {
          if (!keep[i]) p[i] = 0.0f;
        }
      }
    };
    zero_by_hand(*ref);
    for (int s = 0; s < a->num_stages(); ++s) {
      ASSERT_TRUE(SameBits(a->block(s).params(), ref->block(s).params()));
    }
    auto oa = kind.create(a.get()).value();
    auto oref = kind.create(ref.get()).value();
    for (int step = 0; step < 6; ++step) {
      FillGrads(*a, 70 + step);
      FillGrads(*ref, 70 + step);
      const float scale = step % 2 ? 0.5f : 1.0f;
      oa->Step(scale);
      oref->Step(scale);
      zero_by_hand(*ref);
      for (int s = 0; s < a->num_stages(); ++s) {
        const float* p = a->block(s).params().f32();
        const float* q = ref->block(s).params().f32();
        const uint8_t* keep =
            masks[s].defined() ? static_cast<const uint8_t*>(masks[s].raw()) : nullptr;
        for (int64_t i = 0; i < a->block(s).numel(); ++i) {
          if (keep && !keep[i]) {
            ASSERT_EQ(p[i], 0.0f) << "step " << step << " stage " << s << " i " << i;
            ASSERT_FALSE(std::signbit(p[i])) << "+0, not -0";
          } else {
            ASSERT_EQ(std::memcmp(&p[i], &q[i], 4), 0) << "step " << step << " stage " << s << " i "
                                                       << i << ": " << p[i] << " vs " << q[i];
          }
        }
        // State at pruned positions stays 0; elsewhere it is the reference's.
        auto sa = oa->State(s), sr = oref->State(s);
        ASSERT_EQ(sa.size(), sr.size());
        for (size_t k = 0; k < sa.size(); ++k) {
          const core::Tensor& t = sa[k].second;
          const core::Tensor& r = sr[k].second;
          const size_t width = core::DTypeSize(t.dtype());
          const uint8_t* x = static_cast<const uint8_t*>(t.raw());
          const uint8_t* y = static_cast<const uint8_t*>(r.raw());
          for (int64_t i = 0; i < t.numel(); ++i) {
            if (keep && !keep[i]) {
              for (size_t j = 0; j < width; ++j) ASSERT_EQ(x[i * width + j], 0) << sa[k].first;
            } else {
              ASSERT_EQ(std::memcmp(x + i * width, y + i * width, width), 0) << sa[k].first;
            }
          }
        }
      }
    }
    // Without the mask the block trains normally again.
    a->block(0).ClearMask();
    FillGrads(*a, 99);
    oa->Step();
    const uint8_t* keep = static_cast<const uint8_t*>(masks[0].raw());
    int64_t moved = 0;
    for (int64_t i = 0; i < a->block(0).numel(); ++i) {
      moved += !keep[i] && a->block(0).params().f32()[i] != 0.0f;
    }
    EXPECT_GT(moved, 0);
  }
}

}  // namespace
}  // namespace memtrain::optim
