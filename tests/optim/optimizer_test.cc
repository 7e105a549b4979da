// Optimizers against naive double-precision loops written from the papers' / PyTorch's update
// rules, parameter groups, bf16 momentum rounding, Lion's bound constraint, and clipping.
// (Config validation, the learning rate, Reset and masks: optimizer_api_test.cc.)
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "core/kernels/cpu/ops.h"
#include "core/model/gpt2.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "tests/core/test_util.h"

namespace memtrain::optim {
namespace {

using memtrain::testing::AllClose;
using memtrain::testing::RandomFloats;
using memtrain::testing::ToDouble;

double Sign(double x) { return (x > 0) - (x < 0); }

// Lion's kernel numbers with the paper's betas.
core::cpu::LionCoeffs LionNumbers(float lr, float weight_decay, bool tanh = false,
                                  float tau = 1e-3f) {
  return {.lr = lr,
          .beta1 = 0.9f,
          .beta2 = 0.99f,
          .weight_decay = weight_decay,
          .tanh_direction = tanh,
          .tau = tau};
}

TEST(AdamWTest, BothOrdersMatchDoubleLoopOverSteps) {
  const int n = 257;
  for (bool llmc : {false, true}) {
    auto p = RandomFloats(n, 17);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    std::vector<double> pd = ToDouble(p), md(n, 0), vd(n, 0);
    for (int step = 1; step <= 5; ++step) {
      auto g = RandomFloats(n, 100 + step);
      const core::cpu::AdamWCoeffs c{.lr = 1e-2f,
                                     .beta1 = 0.9f,
                                     .beta2 = 0.95f,
                                     .eps = 1e-8f,
                                     .weight_decay = 0.1f,
                                     .bias_correction1 = 1.0f - std::pow(0.9f, float(step)),
                                     .bias_correction2 = 1.0f - std::pow(0.95f, float(step)),
                                     .llmc_order = llmc};
      core::cpu::AdamWUpdate(p.data(), g.data(), m.data(), v.data(), n, c);
      for (int i = 0; i < n; ++i) {
        md[i] = 0.9 * md[i] + 0.1 * g[i];
        vd[i] = 0.95 * vd[i] + 0.05 * g[i] * double(g[i]);
        double mhat = md[i] / (1 - std::pow(0.9, step)), vhat = vd[i] / (1 - std::pow(0.95, step));
        double upd = mhat / (std::sqrt(vhat) + 1e-8);
        pd[i] = !llmc ? pd[i] * (1 - 1e-2 * 0.1) - 1e-2 * upd : pd[i] - 1e-2 * (upd + 0.1 * pd[i]);
      }
    }
    EXPECT_TRUE(AllClose(p, pd, 1e-5)) << "llmc order " << llmc;
    EXPECT_TRUE(AllClose(m, md, 1e-5));
    EXPECT_TRUE(AllClose(v, vd, 1e-5));
  }
}

TEST(LionTest, MatchesDoubleLoopForSignAndTanh) {
  const int n = 1001;
  for (bool tanh : {false, true}) {
    const core::cpu::LionCoeffs h = LionNumbers(1e-2f, 0.5f, tanh, 0.05f);
    auto p = RandomFloats(n, 1);
    std::vector<float> m(n, 0.0f);
    std::vector<double> pd = ToDouble(p), md(n, 0.0);
    for (int step = 0; step < 6; ++step) {
      auto g = RandomFloats(n, 10 + step, -0.1f, 0.1f);
      for (int i = 0; i < n; i += 7) g[i] = 0.0f;  // exact zeros
      core::cpu::LionUpdate(p.data(), g.data(), m.data(), n, h, /*grad_scale=*/2.0f);
      for (int i = 0; i < n; ++i) {
        const double gi = 2.0 * g[i];
        const double c = 0.9 * md[i] + 0.1 * gi;
        const double d = !tanh ? Sign(c) : std::tanh(c / 0.05);
        pd[i] = pd[i] * (1 - 1e-2 * 0.5) - 1e-2 * d;
        md[i] = 0.99 * md[i] + 0.01 * gi;
      }
    }
    EXPECT_TRUE(AllClose(p, pd, 1e-5)) << "tanh " << tanh;
    EXPECT_TRUE(AllClose(m, md, 1e-5));
  }
}

TEST(LionTest, SignOfZeroIsZero) {
  // Zero gradient and zero momentum: c = 0, so only weight decay moves theta (DeepSpeed's fused
  // kernel stepped by -lr here).
  std::vector<float> p = {1.0f, -2.0f}, g = {0.0f, 0.0f}, m = {0.0f, 0.0f};
  core::cpu::LionUpdate(p.data(), g.data(), m.data(), 2, LionNumbers(0.1f, 0.5f));
  EXPECT_FLOAT_EQ(p[0], 0.95f);
  EXPECT_FLOAT_EQ(p[1], -1.9f);
}

TEST(LionTest, Bf16MomentumIsRoundedToNearest) {
  const int n = 4096;
  const core::cpu::LionCoeffs h = LionNumbers(1e-3f, 0.1f);
  auto p = RandomFloats(n, 2);
  std::vector<uint16_t> m(n, 0);
  std::vector<double> pd = ToDouble(p);
  std::vector<float> mref(n, 0.0f);  // the reference keeps bf16 values too
  // The hyperparameters are floats: use their exact values (1 - 0.99f is 0.0099999905).
  const double b1 = h.beta1, c1 = 1.0f - h.beta1, b2 = h.beta2, c2 = 1.0f - h.beta2;
  for (int step = 0; step < 5; ++step) {
    auto g = RandomFloats(n, 20 + step);
    core::cpu::LionUpdateBf16(p.data(), g.data(), m.data(), n, h);
    for (int i = 0; i < n; ++i) {
      const double c = b1 * mref[i] + c1 * g[i];
      pd[i] = pd[i] * (1 - 1e-3 * 0.1) - 1e-3 * Sign(c);
      const double exact = b2 * mref[i] + c2 * g[i];
      const float stored = core::Bf16ToFloat(m[i]);
      // Round to nearest: within half a bf16 ulp (2^-8 relative) of the exact value, plus the
      // float arithmetic before rounding (a few float ulps of terms of size ~0.01). Truncation
      // would be off by up to a whole bf16 ulp.
      const double half_ulp = std::ldexp(1.0, std::ilogb(exact) - 8);
      ASSERT_LE(std::abs(stored - exact), half_ulp + 4e-9)
          << "step " << step << " i " << i << " exact " << exact << " stored " << stored;
      mref[i] = stored;
    }
  }
  EXPECT_TRUE(AllClose(p, pd, 1e-5));
}

TEST(LionTest, IteratesInsideTheBoxStayInside) {
  // Lion with K = L1 and weight decay lambda minimises f subject to ||x||_inf <= 1/lambda:
  // |x| <= 1/lambda implies |(1 - lr*lambda) x - lr*s| <= 1/lambda for |s| <= 1.
  const int n = 2000;
  const float lambda = 2.0f, bound = 1.0f / lambda;
  auto p = RandomFloats(n, 3, -bound, bound);
  p[0] = bound;
  p[1] = -bound;
  std::vector<float> m(n, 0.0f);
  const core::cpu::LionCoeffs h = LionNumbers(0.05f, lambda);
  for (int step = 0; step < 300; ++step) {
    auto g = RandomFloats(n, 100 + step, -5.0f, 5.0f);
    core::cpu::LionUpdate(p.data(), g.data(), m.data(), n, h);
    for (int i = 0; i < n; ++i) ASSERT_LE(std::abs(p[i]), bound * (1 + 1e-6f)) << step;
  }
  // From outside, the decay brings every coordinate into the box.
  std::vector<float> q(n, 3.0f), mq(n, 0.0f);
  for (int step = 0; step < 200; ++step) {
    auto g = RandomFloats(n, 500 + step, -5.0f, 5.0f);
    core::cpu::LionUpdate(q.data(), g.data(), mq.data(), n, h);
  }
  for (int i = 0; i < n; ++i) ASSERT_LE(std::abs(q[i]), bound * (1 + 1e-5f));
}

TEST(SgdTest, MomentumAndNesterovMatchDoubleLoop) {
  const int n = 513;
  for (bool nesterov : {false, true}) {
    core::cpu::SgdCoeffs h{.lr = 0.1f,
                           .momentum = 0.9f,
                           .dampening = nesterov ? 0.0f : 0.25f,
                           .weight_decay = 0.01f,
                           .nesterov = nesterov,
                           .first_step = true};
    auto p = RandomFloats(n, 4);
    std::vector<float> buf(n, 123.0f);  // garbage: step 1 must overwrite it
    std::vector<double> pd = ToDouble(p), bd(n, 0.0);
    for (int step = 1; step <= 5; ++step) {
      auto g = RandomFloats(n, 30 + step);
      h.first_step = step == 1;
      core::cpu::SgdUpdate(p.data(), g.data(), buf.data(), n, h);
      for (int i = 0; i < n; ++i) {
        double gi = g[i] + 0.01 * pd[i];
        bd[i] = step == 1 ? gi : 0.9 * bd[i] + (1 - h.dampening) * gi;
        gi = nesterov ? gi + 0.9 * bd[i] : bd[i];
        pd[i] -= 0.1 * gi;
      }
    }
    EXPECT_TRUE(AllClose(p, pd, 1e-5)) << "nesterov " << nesterov;
    EXPECT_TRUE(AllClose(buf, bd, 1e-5));
  }
  // Plain SGD keeps no state.
  std::vector<float> p = {1.0f}, g = {0.5f};
  core::cpu::SgdUpdate(p.data(), g.data(), nullptr, 1,
                       {.lr = 0.1f,
                        .momentum = 0.0f,
                        .dampening = 0.0f,
                        .weight_decay = 0.0f,
                        .nesterov = false,
                        .first_step = true});
  EXPECT_FLOAT_EQ(p[0], 0.95f);
}

std::unique_ptr<core::GPT2> TinyModelWithGrads() {
  auto model = core::GPT2::Create(
                   {.max_seq_len = 8, .vocab_size = 16, .n_layer = 2, .n_head = 2, .n_embd = 8})
                   .value();
  model->InitWeights(1);
  for (int s = 0; s < model->num_stages(); ++s) {
    EXPECT_TRUE(model->block(s).EnsureGrads().ok());  // gradients are allocated lazily
    const core::Tensor& g = model->block(s).grads();
    auto r = RandomFloats(g.numel(), 40 + s);
    std::copy(r.begin(), r.end(), g.f32());
  }
  return model;
}

TEST(ParamGroupTest, BiasesAndNormsAreNotDecayedByDefault) {
  for (int mode = 0; mode < 3; ++mode) {
    auto model = TinyModelWithGrads();
    for (int s = 0; s < model->num_stages(); ++s) model->block(s).ZeroGrad();
    DecayPolicy policy;
    if (mode == 1) policy.decay_1d = true;
    if (mode == 2) policy.no_decay = {"wpe", "h.1.fcw"};
    std::vector<std::vector<float>> before;
    for (int s = 0; s < model->num_stages(); ++s) {
      const core::Tensor& p = model->block(s).params();
      before.emplace_back(p.f32(), p.f32() + p.numel());
    }
    // SGD with zero gradients: decayed tensors shrink by exactly (1 - lr*wd), the rest stay.
    auto opt = Sgd::Create(model.get(), {.lr = 0.5f, .weight_decay = 0.2f}, policy).value();
    opt->Step();
    for (int s = 0; s < model->num_stages(); ++s) {
      const core::ParamBlock& b = model->block(s);
      for (const core::ParamView& v : b.views()) {
        bool decayed = v.shape.size() >= 2 || mode == 1;
        if (mode == 2 && (v.name == "wpe" || (b.name() == "h.1" && v.name == "fcw"))) {
          decayed = false;
        }
        const float f = decayed ? 0.9f : 1.0f;
        for (int64_t i = 0; i < v.numel; ++i) {
          ASSERT_FLOAT_EQ(b.params().f32()[v.offset + i], before[s][v.offset + i] * f)
              << b.name() << "." << v.name << " mode " << mode;
        }
      }
    }
  }
}

TEST(ClipTest, GlobalNormAndScaleFoldedIntoTheStep) {
  auto model = TinyModelWithGrads();
  double want = 0;
  for (int s = 0; s < model->num_stages(); ++s) {
    const core::Tensor& g = model->block(s).grads();
    for (int64_t i = 0; i < g.numel(); ++i) want += double(g.f32()[i]) * g.f32()[i];
  }
  want = std::sqrt(want);
  const double norm = GlobalGradNorm(*model);
  EXPECT_NEAR(norm, want, 1e-6 * want);
  EXPECT_FLOAT_EQ(ClipScale(norm, 0.0f), 1.0f);             // off
  EXPECT_FLOAT_EQ(ClipScale(norm, float(norm) * 2), 1.0f);  // already below
  const float scale = ClipScale(norm, 1.0f);
  EXPECT_NEAR(scale * norm, 1.0, 1e-5);
  // Stepping with grad_scale equals stepping on pre-scaled gradients.
  auto a = TinyModelWithGrads(), b = TinyModelWithGrads();
  for (int s = 0; s < b->num_stages(); ++s) {
    const core::Tensor& g = b->block(s).grads();
    for (int64_t i = 0; i < g.numel(); ++i) g.f32()[i] *= scale;
  }
  auto oa = AdamW::Create(a.get(), {.lr = 1e-2f, .weight_decay = 0.1f}).value();
  auto ob = AdamW::Create(b.get(), {.lr = 1e-2f, .weight_decay = 0.1f}).value();
  oa->Step(scale);
  ob->Step();
  for (int s = 0; s < a->num_stages(); ++s) {
    const core::Tensor& pa = a->block(s).params();
    const core::Tensor& pb = b->block(s).params();
    for (int64_t i = 0; i < pa.numel(); ++i) ASSERT_FLOAT_EQ(pa.f32()[i], pb.f32()[i]);
  }
}

TEST(StateBytesTest, LionKeepsOneTensorAndHalvesItInBf16) {
  auto model = TinyModelWithGrads();
  int64_t params = 0;
  for (int s = 0; s < model->num_stages(); ++s) params += model->block(s).numel();
  EXPECT_EQ(AdamW::Create(model.get(), {}).value()->state_bytes(), 8 * params);
  EXPECT_EQ(Lion::Create(model.get(), {}).value()->state_bytes(), 4 * params);
  EXPECT_EQ(Lion::Create(model.get(), {.bf16_momentum = true}).value()->state_bytes(), 2 * params);
  EXPECT_EQ(Sgd::Create(model.get(), {}).value()->state_bytes(), 0);
  EXPECT_EQ(Sgd::Create(model.get(), {.momentum = 0.9f}).value()->state_bytes(), 4 * params);
}

}  // namespace
}  // namespace memtrain::optim
