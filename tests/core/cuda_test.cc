// The CUDA backend against the CPU backend, op by op (forward and backward), a 10-step GPT-2
// training run on each device, and the Philox noise bit for bit. Every test skips with the reason
// where no GPU is present (or the build has no CUDA); CudaBuild checks the build itself.
//
// Tolerances: fp32 ops within 1e-5 of the CPU result, normwise (max |gpu - cpu| <= 1e-5 * max
// |cpu|). bf16 compute rounds both operands of every product to 8 significant bits, so its products
// are compared at 2e-2 and a bf16 training run's losses at 2e-2 of the fp32 CPU run.
#include "core/cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "optim/adamw.h"
#include "optim/lion.h"
#include "optim/sgd.h"
#include "tests/core/test_util.h"

namespace memtrain {
namespace {

using core::Backend;
using core::Device;
using core::ExecContext;
using memtrain::testing::AllClose;
using memtrain::testing::RandomFloats;

TEST(CudaBuild, CompiledWhenNvccPresent) {
  // MEMTRAIN_EXPECT_CUDA is 1 when CMake found nvcc (and MEMTRAIN_CUDA was not OFF): CI
  // compiles the CUDA backend wherever the toolkit is installed, so it cannot rot unseen.
  EXPECT_EQ(core::CudaCompiledIn(), MEMTRAIN_EXPECT_CUDA == 1);
  if (!core::CudaCompiledIn()) {
    EXPECT_EQ(core::CudaDeviceCount(), 0);
    EXPECT_FALSE(core::InitCuda(0).ok());
  }
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (core::CudaDeviceCount() == 0) {
      GTEST_SKIP() << "no GPU: " << core::CudaUnavailableReason();
    }
    ASSERT_TRUE(core::InitCuda(0).ok());
    gpu_ = &core::BackendFor(kGpu);
    ASSERT_TRUE(gpu_->SetComputePrecision(core::ComputePrecision::kF32).ok());
  }
  void TearDown() override {
    if (gpu_ != nullptr) (void)gpu_->SetComputePrecision(core::ComputePrecision::kF32);
  }

  // A device buffer holding `host` (kept alive by the test).
  template <typename T>
  T* Up(const std::vector<T>& host) {
    auto t = core::Tensor::Empty({static_cast<int64_t>(host.size() * sizeof(T))}, core::DType::kU8,
                                 core::MemoryTag::kOther, kGpu);
    EXPECT_TRUE(t.ok());
    keep_.push_back(*t);
    gpu_->CopyFromHost(ctx_, t->raw(), host.data(), host.size() * sizeof(T));
    return static_cast<T*>(t->raw());
  }
  template <typename T>
  std::vector<T> Down(const T* dev, size_t n) {
    std::vector<T> h(n);
    gpu_->CopyToHost(ctx_, h.data(), dev, n * sizeof(T));
    return h;
  }

  static constexpr Device kGpu = {core::DeviceType::kCuda, 0};
  Backend& cpu_ = core::BackendFor(Device::Cpu());
  ExecContext cpu_ctx_ = ExecContext::For(Device::Cpu());
  ExecContext ctx_ = ExecContext::For(kGpu);
  Backend* gpu_ = nullptr;
  std::vector<core::Tensor> keep_;
};

constexpr double kF32Tol = 1e-5;
constexpr double kBf16Tol = 2e-2;

// ---- matrix products, fp32 and bf16, with and without bias / residual / accumulation ---------
TEST_F(CudaTest, MatmulForwardAndBackwardMatchCpu) {
  for (const bool bf16 : {false, true}) {
    ASSERT_TRUE(gpu_->SetComputePrecision(bf16 ? core::ComputePrecision::kBf16
                                               : core::ComputePrecision::kF32)
                    .ok());
    const double tol = bf16 ? kBf16Tol : kF32Tol;
    // Odd sizes and the GPT-2 head's shape (Vp = 50304 columns would be slow on the CPU; 1152).
    for (auto [N, C, OC] : {std::tuple<int64_t, int64_t, int64_t>{74, 48, 80},
                            {37, 33, 19},
                            {256, 768, 2304},
                            {128, 768, 1152}}) {
      for (const bool with_bias : {false, true}) {
        for (const bool with_residual : {false, true}) {
          SCOPED_TRACE(::testing::Message()
                       << (bf16 ? "bf16 " : "fp32 ") << N << "x" << C << "x" << OC << " bias "
                       << with_bias << " residual " << with_residual);
          auto inp = RandomFloats(N * C, 1), w = RandomFloats(OC * C, 2), b = RandomFloats(OC, 3);
          auto res = RandomFloats(N * OC, 4), dout = RandomFloats(N * OC, 5);
          // Forward.
          std::vector<float> out_cpu(N * OC);
          cpu_.MatmulForward(cpu_ctx_, out_cpu.data(), with_residual ? res.data() : nullptr,
                             inp.data(), w.data(), with_bias ? b.data() : nullptr, N, C, OC);
          float* d_out = Up(std::vector<float>(N * OC, 7.0f));
          gpu_->MatmulForward(ctx_, d_out, with_residual ? Up(res) : nullptr, Up(inp), Up(w),
                              with_bias ? Up(b) : nullptr, N, C, OC);
          EXPECT_TRUE(AllClose(Down(d_out, N * OC), out_cpu, tol)) << "forward";
          // In place on the residual (out aliases residual), as GPT-2's projections run.
          if (with_residual) {
            float* d_res = Up(res);
            gpu_->MatmulForward(ctx_, d_res, d_res, Up(inp), Up(w), with_bias ? Up(b) : nullptr, N,
                                C, OC);
            EXPECT_TRUE(AllClose(Down(d_res, N * OC), out_cpu, tol)) << "forward in place";
          }
          // Backward: gradients accumulate onto non-zero values; dinp written or accumulated.
          for (const bool acc : {false, true}) {
            auto dinp0 = RandomFloats(N * C, 6), dw0 = RandomFloats(OC * C, 7);
            auto db0 = RandomFloats(OC, 8);
            std::vector<float> dinp_c = dinp0, dw_c = dw0, db_c = db0;
            cpu_.MatmulBackward(cpu_ctx_, dinp_c.data(), dw_c.data(),
                                with_bias ? db_c.data() : nullptr, dout.data(), inp.data(),
                                w.data(), N, C, OC, acc);
            float *d_dinp = Up(dinp0), *d_dw = Up(dw0), *d_db = Up(db0);
            gpu_->MatmulBackward(ctx_, d_dinp, d_dw, with_bias ? d_db : nullptr, Up(dout), Up(inp),
                                 Up(w), N, C, OC, acc);
            EXPECT_TRUE(AllClose(Down(d_dinp, N * C), dinp_c, tol)) << "dinp acc " << acc;
            EXPECT_TRUE(AllClose(Down(d_dw, OC * C), dw_c, tol)) << "dweight";
            EXPECT_TRUE(AllClose(Down(d_db, OC), db_c, kF32Tol)) << "dbias (always fp32)";
          }
        }
      }
    }
  }
}

TEST_F(CudaTest, LayerNormGeluMatchCpu) {
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 48}, {512, 768}, {3, 1600}}) {
    SCOPED_TRACE(::testing::Message() << N << "x" << C);
    auto inp = RandomFloats(N * C, 11, -2, 3), w = RandomFloats(C, 12), b = RandomFloats(C, 13);
    std::vector<float> out(N * C), mean(N), rstd(N);
    cpu_.LayerNormForward(cpu_ctx_, out.data(), mean.data(), rstd.data(), inp.data(), w.data(),
                          b.data(), N, C);
    float *d_out = Up(std::vector<float>(N * C)), *d_mean = Up(std::vector<float>(N));
    float* d_rstd = Up(std::vector<float>(N));
    float *d_inp = Up(inp), *d_w = Up(w), *d_b = Up(b);
    gpu_->LayerNormForward(ctx_, d_out, d_mean, d_rstd, d_inp, d_w, d_b, N, C);
    EXPECT_TRUE(AllClose(Down(d_out, N * C), out, kF32Tol));
    EXPECT_TRUE(AllClose(Down(d_mean, N), mean, kF32Tol));
    EXPECT_TRUE(AllClose(Down(d_rstd, N), rstd, kF32Tol));
    // Backward accumulates into all three.
    auto dout = RandomFloats(N * C, 14), dinp0 = RandomFloats(N * C, 15);
    auto dw0 = RandomFloats(C, 16), db0 = RandomFloats(C, 17);
    std::vector<float> dinp = dinp0, dw = dw0, db = db0;
    cpu_.LayerNormBackward(cpu_ctx_, dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                           w.data(), mean.data(), rstd.data(), N, C);
    float *d_dinp = Up(dinp0), *d_dw = Up(dw0), *d_db = Up(db0);
    gpu_->LayerNormBackward(ctx_, d_dinp, d_dw, d_db, Up(dout), d_inp, d_w, d_mean, d_rstd, N, C);
    EXPECT_TRUE(AllClose(Down(d_dinp, N * C), dinp, kF32Tol)) << "dinp";
    EXPECT_TRUE(AllClose(Down(d_dw, C), dw, kF32Tol)) << "dweight";
    EXPECT_TRUE(AllClose(Down(d_db, C), db, kF32Tol)) << "dbias";
  }
  const int64_t n = 100003;
  auto x = RandomFloats(n, 21, -6, 6), dout = RandomFloats(n, 22);
  std::vector<float> y(n), dx(n);
  cpu_.GeluForward(cpu_ctx_, y.data(), x.data(), n);
  cpu_.GeluBackward(cpu_ctx_, dx.data(), x.data(), dout.data(), n);
  float *d_x = Up(x), *d_y = Up(y), *d_dout = Up(dout);
  gpu_->GeluForward(ctx_, d_y, d_x, n);
  EXPECT_TRUE(AllClose(Down(d_y, n), y, kF32Tol)) << "gelu";
  gpu_->GeluBackward(ctx_, d_dout, d_x, d_dout, n);  // in place, as GPT-2 calls it
  EXPECT_TRUE(AllClose(Down(d_dout, n), dx, kF32Tol)) << "gelu backward";
}

TEST_F(CudaTest, AttentionMatchesCpu) {
  struct Case {
    int64_t B, T, C, NH;
    bool bf16;
  };
  for (const Case& c :
       {Case{2, 37, 48, 3, false}, Case{1, 130, 64, 2, false}, Case{2, 256, 256, 4, false},
        Case{2, 256, 256, 4, true}, Case{1, 1024, 128, 2, true}, Case{3, 77, 192, 3, true}}) {
    SCOPED_TRACE(::testing::Message() << "B " << c.B << " T " << c.T << " C " << c.C << " NH "
                                      << c.NH << (c.bf16 ? " bf16" : " fp32"));
    ASSERT_TRUE(gpu_->SetComputePrecision(c.bf16 ? core::ComputePrecision::kBf16
                                                 : core::ComputePrecision::kF32)
                    .ok());
    const double tol = c.bf16 ? kBf16Tol : kF32Tol;
    const int64_t N = c.B * c.T;
    auto qkv = RandomFloats(N * 3 * c.C, 31, -2, 2), dout = RandomFloats(N * c.C, 32);
    std::vector<float> out(N * c.C), lse(c.B * c.NH * c.T), dqkv(N * 3 * c.C);
    cpu_.AttentionForward(cpu_ctx_, out.data(), lse.data(), qkv.data(), c.B, c.T, c.C, c.NH);
    cpu_.AttentionBackward(cpu_ctx_, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(),
                           c.B, c.T, c.C, c.NH);
    float* d_qkv = Up(qkv);
    float *d_out = Up(std::vector<float>(out.size())), *d_lse = Up(std::vector<float>(lse.size()));
    gpu_->AttentionForward(ctx_, d_out, d_lse, d_qkv, c.B, c.T, c.C, c.NH);
    EXPECT_TRUE(AllClose(Down(d_out, out.size()), out, tol)) << "out";
    EXPECT_TRUE(AllClose(Down(d_lse, lse.size()), lse, tol)) << "lse";
    // Backward from the CPU's forward results, so only the backward is compared; dqkv is written
    // (start from garbage).
    float* d_dqkv = Up(std::vector<float>(dqkv.size(), 123.0f));
    gpu_->AttentionBackward(ctx_, d_dqkv, Up(dout), d_qkv, Up(out), Up(lse), c.B, c.T, c.C, c.NH);
    EXPECT_TRUE(AllClose(Down(d_dqkv, dqkv.size()), dqkv, tol)) << "dqkv";
  }
}

TEST_F(CudaTest, CrossEntropyAndEmbeddingMatchCpu) {
  const int64_t B = 3, T = 41, N = B * T, V = 1000, Vp = 1024, C = 64, maxT = 64;
  auto logits = RandomFloats(N * Vp, 41, -8, 8);
  std::vector<int32_t> targets(N), tokens(N);
  for (int64_t i = 0; i < N; ++i) {
    targets[i] = (i % 7 == 3) ? -1 : static_cast<int32_t>((i * 7919) % V);
    tokens[i] = static_cast<int32_t>((i * 31) % 50);  // many repeats: the dwte sums collide
  }
  std::vector<float> losses(N), lse(N), dlogits(N * Vp);
  cpu_.CrossEntropyForward(cpu_ctx_, losses.data(), lse.data(), logits.data(), targets.data(), N, V,
                           Vp);
  cpu_.CrossEntropyBackward(cpu_ctx_, dlogits.data(), logits.data(), lse.data(), targets.data(),
                            0.37f, N, V, Vp);
  float *d_logits = Up(logits), *d_losses = Up(std::vector<float>(N, 5.0f));
  float* d_lse = Up(std::vector<float>(N));
  int32_t* d_targets = Up(targets);
  gpu_->CrossEntropyForward(ctx_, d_losses, d_lse, d_logits, d_targets, N, V, Vp);
  EXPECT_TRUE(AllClose(Down(d_losses, N), losses, kF32Tol)) << "losses";
  EXPECT_TRUE(AllClose(Down(d_lse, N), lse, kF32Tol)) << "lse";
  gpu_->CrossEntropyBackward(ctx_, d_logits, d_logits, d_lse, d_targets, 0.37f, N, V, Vp);
  EXPECT_TRUE(AllClose(Down(d_logits, N * Vp), dlogits, kF32Tol)) << "dlogits (in place)";

  auto wte = RandomFloats(V * C, 42), wpe = RandomFloats(maxT * C, 43);
  for (const int64_t pos_offset : {0, 20}) {
    const int64_t Tn = pos_offset ? 44 - pos_offset : T;  // positions stay below maxT
    const int64_t Nn = B * Tn;
    std::vector<int32_t> tok(tokens.begin(), tokens.begin() + Nn);
    std::vector<float> out(Nn * C);
    cpu_.EmbeddingForward(cpu_ctx_, out.data(), tok.data(), wte.data(), wpe.data(), B, Tn, C,
                          pos_offset);
    float* d_out = Up(std::vector<float>(Nn * C));
    int32_t* d_tok = Up(tok);
    float *d_wte = Up(wte), *d_wpe = Up(wpe);
    gpu_->EmbeddingForward(ctx_, d_out, d_tok, d_wte, d_wpe, B, Tn, C, pos_offset);
    EXPECT_TRUE(AllClose(Down(d_out, Nn * C), out, kF32Tol)) << "embedding";
    auto dout = RandomFloats(Nn * C, 44);
    std::vector<float> dwte = wte, dwpe = wpe;  // accumulate onto non-zero
    cpu_.EmbeddingBackward(cpu_ctx_, dwte.data(), dwpe.data(), dout.data(), tok.data(), B, Tn, C,
                           pos_offset);
    gpu_->EmbeddingBackward(ctx_, d_wte, d_wpe, Up(dout), d_tok, B, Tn, C, pos_offset);
    EXPECT_TRUE(AllClose(Down(d_wte, V * C), dwte, kF32Tol)) << "dwte";
    EXPECT_TRUE(AllClose(Down(d_wpe, maxT * C), dwpe, kF32Tol)) << "dwpe";
  }
}

TEST_F(CudaTest, OptimizersMatchCpu) {
  const int64_t n = 300007;
  auto p0 = RandomFloats(n, 51), g = RandomFloats(n, 52), m0 = RandomFloats(n, 53, -0.1f, 0.1f);
  auto v0 = RandomFloats(n, 54, 0.0f, 0.01f);
  std::vector<uint8_t> mask(n);
  for (int64_t i = 0; i < n; ++i) mask[i] = (i % 3) != 0;
  for (const bool masked : {false, true}) {
    const uint8_t* hm = masked ? mask.data() : nullptr;
    const uint8_t* dm = masked ? Up(mask) : nullptr;
    for (const bool llmc : {false, true}) {
      core::AdamWCoeffs c{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.271f, 0.0975f, llmc};
      auto p = p0, m = m0, v = v0;
      cpu_.AdamWUpdate(cpu_ctx_, p.data(), g.data(), m.data(), v.data(), n, c, 0.5f, hm);
      float *dp = Up(p0), *dmo = Up(m0), *dv = Up(v0);
      gpu_->AdamWUpdate(ctx_, dp, Up(g), dmo, dv, n, c, 0.5f, dm);
      EXPECT_TRUE(AllClose(Down(dp, n), p, kF32Tol)) << "adamw params llmc " << llmc;
      EXPECT_TRUE(AllClose(Down(dmo, n), m, kF32Tol)) << "adamw m";
      EXPECT_TRUE(AllClose(Down(dv, n), v, kF32Tol)) << "adamw v";
    }
    for (const bool tanh_dir : {false, true}) {
      core::LionCoeffs c{1e-4f, 0.9f, 0.99f, 0.1f, tanh_dir, 0.01f};
      auto p = p0, m = m0;
      cpu_.LionUpdate(cpu_ctx_, p.data(), g.data(), m.data(), n, c, 1.0f, hm);
      float *dp = Up(p0), *dmo = Up(m0);
      gpu_->LionUpdate(ctx_, dp, Up(g), dmo, n, c, 1.0f, dm);
      EXPECT_TRUE(AllClose(Down(dp, n), p, kF32Tol)) << "lion params tanh " << tanh_dir;
      EXPECT_TRUE(AllClose(Down(dmo, n), m, kF32Tol)) << "lion m";
      std::vector<uint16_t> m16(n);
      for (int64_t i = 0; i < n; ++i) m16[i] = core::FloatToBf16(m0[i]);
      std::vector<float> p2 = p0;
      std::vector<uint16_t> m16c = m16;
      cpu_.LionUpdateBf16(cpu_ctx_, p2.data(), g.data(), m16c.data(), n, c, 1.0f, hm);
      float* dp2 = Up(p0);
      uint16_t* dm16 = Up(m16);
      gpu_->LionUpdateBf16(ctx_, dp2, Up(g), dm16, n, c, 1.0f, dm);
      EXPECT_TRUE(AllClose(Down(dp2, n), p2, kF32Tol)) << "lion bf16 params";
      std::vector<uint16_t> got = Down(dm16, n);
      int64_t differ = 0;
      for (int64_t i = 0; i < n; ++i) differ += std::abs(int(got[i]) - int(m16c[i])) > 1;
      EXPECT_EQ(differ, 0) << "bf16 moments more than one bf16 ulp apart";
    }
    for (const bool nesterov : {false, true}) {
      core::SgdCoeffs c{0.01f, 0.9f, 0.1f, 1e-4f, nesterov, false};
      auto p = p0, buf = m0;
      cpu_.SgdUpdate(cpu_ctx_, p.data(), g.data(), buf.data(), n, c, 1.0f, hm);
      float *dp = Up(p0), *dbuf = Up(m0);
      gpu_->SgdUpdate(ctx_, dp, Up(g), dbuf, n, c, 1.0f, dm);
      EXPECT_TRUE(AllClose(Down(dp, n), p, kF32Tol)) << "sgd params";
      EXPECT_TRUE(AllClose(Down(dbuf, n), buf, kF32Tol)) << "sgd buf";
    }
    if (masked) {  // pruned entries are exactly 0 after a masked update
      core::AdamWCoeffs c{1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.271f, 0.0975f, false};
      float *dp = Up(p0), *dmo = Up(m0), *dv = Up(v0);
      gpu_->AdamWUpdate(ctx_, dp, Up(g), dmo, dv, n, c, 1.0f, dm);
      auto hp = Down(dp, n);
      int64_t nonzero_pruned = 0;
      for (int64_t i = 0; i < n; ++i) nonzero_pruned += !mask[i] && hp[i] != 0.0f;
      EXPECT_EQ(nonzero_pruned, 0);
    }
  }
}

TEST_F(CudaTest, ReductionsAndHelpersMatchCpu) {
  for (const int64_t n : {1, 1000, 12345679}) {
    auto x = RandomFloats(n, 61, -1, 2);
    float* d_x = Up(x);
    // The GPU accumulates in double: against sequential double sums (each off by up to n * 2^-53
    // relative, ~1e-9 here) at 1e-9; float accumulation would be ~1e-7 off. The CPU's squared
    // norm adds float partial sums, so it agrees to float rounding only.
    double s_exact = 0, q_exact = 0, sum_abs = 0;
    for (float v : x) {
      s_exact += v;
      q_exact += double(v) * v;
      sum_abs += std::abs(v);
    }
    EXPECT_NEAR(gpu_->Sum(ctx_, d_x, n), s_exact, 1e-9 * sum_abs) << "n " << n;
    EXPECT_NEAR(gpu_->SquaredNorm(ctx_, d_x, n), q_exact, 1e-9 * q_exact) << "n " << n;
    const double q_cpu = cpu_.SquaredNorm(cpu_ctx_, x.data(), n);
    EXPECT_NEAR(gpu_->SquaredNorm(ctx_, d_x, n), q_cpu, 1e-5 * q_cpu) << "n " << n;
    // Deterministic: the same bits twice.
    EXPECT_EQ(gpu_->SquaredNorm(ctx_, d_x, n), gpu_->SquaredNorm(ctx_, d_x, n));
    auto y = RandomFloats(n, 62);
    std::vector<uint8_t> mask(n);
    for (int64_t i = 0; i < n; ++i) mask[i] = (i * 13) % 5 != 0;
    auto yc = y;
    cpu_.Axpy(cpu_ctx_, yc.data(), -0.75f, x.data(), n);
    cpu_.ApplyMask(cpu_ctx_, yc.data(), mask.data(), n);
    float* d_y = Up(y);
    gpu_->Axpy(ctx_, d_y, -0.75f, d_x, n);
    gpu_->ApplyMask(ctx_, d_y, Up(mask), n);
    EXPECT_TRUE(AllClose(Down(d_y, n), yc, kF32Tol));
  }
}

TEST_F(CudaTest, PhiloxNoiseIsBitIdenticalToCpu) {
  for (auto [n, offset] :
       {std::pair<int64_t, uint64_t>{1, 0}, {7, 3}, {1 << 20, 0}, {1000001, (1ull << 33) + 1}}) {
    std::vector<float> cpu(n);
    core::FillNormal(absl::MakeSpan(cpu), 0x1234567890abcdefull, 42, offset, 0.5f, 0.02f);
    float* d = Up(std::vector<float>(n));
    gpu_->FillNormal(ctx_, d, n, 0x1234567890abcdefull, 42, offset, 0.5f, 0.02f);
    std::vector<float> got = Down(d, n);
    int64_t differ = 0, first = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (std::memcmp(&got[i], &cpu[i], 4) != 0) {
        if (first < 0) first = i;
        ++differ;
      }
    }
    EXPECT_EQ(differ, 0) << "n " << n << " offset " << offset << ": first at " << first << " gpu "
                         << got[std::max<int64_t>(first, 0)] << " cpu "
                         << cpu[std::max<int64_t>(first, 0)];
  }
}

// ---- GPT-2 trained for 10 steps on each device from the same initial weights ---------------
std::vector<double> TrainLosses(Device device, core::ComputePrecision precision, int steps) {
  core::GPT2Config cfg{
      .max_seq_len = 128, .vocab_size = 300, .n_layer = 2, .n_head = 4, .n_embd = 128};
  auto model = core::GPT2::Create(cfg, device);
  EXPECT_TRUE(model.ok()) << model.status();
  (*model)->InitWeights(1337);
  const int B = 4, T = 64;
  EXPECT_TRUE((*model)->Prepare({.B = B, .T = T, .mode = core::ModelMode::kTrain}).ok());
  EXPECT_TRUE(core::BackendFor(device).SetComputePrecision(precision).ok());
  core::Engine engine(model->get());
  auto opt = optim::AdamW::Create(model->get(), {.lr = 2e-3f, .weight_decay = 0.1f});
  EXPECT_TRUE(opt.ok()) << opt.status();
  std::vector<int32_t> tokens(B * T + 1);
  std::vector<double> losses;
  // The same batch every step: the model memorises it, so the loss falls fast and the runs are
  // compared while they learn.
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>((i * 37 + (i * i) % 13) % cfg.vocab_size);
  }
  for (int step = 0; step < steps; ++step) {
    std::vector<int32_t> in(tokens.begin(), tokens.end() - 1), tg(tokens.begin() + 1, tokens.end());
    core::Batch batch{.inputs = in.data(), .targets = tg.data(), .B = B, .T = T};
    engine.ZeroGrad();
    EXPECT_TRUE(engine.Forward(batch).ok());
    EXPECT_TRUE(engine.Backward(batch).ok());
    losses.push_back((*model)->Loss(0));
    (*opt)->Step();
  }
  EXPECT_TRUE(core::BackendFor(device).SetComputePrecision(core::ComputePrecision::kF32).ok());
  return losses;
}

TEST_F(CudaTest, TenTrainingStepsMatchCpu) {
  // Losses only: AdamW turns float noise on a mathematically-zero gradient (GPT-2's key bias) into
  // +-lr steps that differ between devices but cannot move the loss (see docs/optimizers.md).
  const auto cpu = TrainLosses(Device::Cpu(), core::ComputePrecision::kF32, 10);
  const auto gpu = TrainLosses(kGpu, core::ComputePrecision::kF32, 10);
  const auto bf16 = TrainLosses(kGpu, core::ComputePrecision::kBf16, 10);
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0, worst_bf16 = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    std::printf("step %zu  loss cpu %.7f  gpu fp32 %.7f  gpu bf16 %.7f\n", i + 1, cpu[i], gpu[i],
                bf16[i]);
    worst = std::max(worst, std::abs(gpu[i] - cpu[i]) / std::abs(cpu[i]));
    worst_bf16 = std::max(worst_bf16, std::abs(bf16[i] - cpu[i]) / std::abs(cpu[i]));
  }
  std::printf("largest relative loss difference: fp32 %.3g, bf16 %.3g\n", worst, worst_bf16);
  EXPECT_LT(cpu.back(), cpu.front() - 0.3) << "the run must learn for the comparison to mean much";
  EXPECT_LE(worst, 1e-5) << "fp32 GPU losses vs CPU";
  EXPECT_LE(worst_bf16, kBf16Tol) << "bf16 GPU losses vs fp32 CPU";
}

}  // namespace
}  // namespace memtrain
