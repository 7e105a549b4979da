// Ulysses sequence parallelism at a fixed per-rank memory budget. Run under mpirun: the world is
// one sequence group of P ranks.
//   1. From the exact memory estimate (GPT-2 with recompute + AdamW state + Ulysses' buffers, the
//      same numbers the allocator then counts), the longest trainable T per rank budget for
//      P = 1, 2, 4, 8, and the ratio to P = 1, for the model trained here and for GPT-2 124M.
//   2. This run's P: one training step (forward, backward with recompute, gradient all-reduce,
//      AdamW) at that longest T under the budget (core::SetMemoryBudget refuses any allocation
//      past it), the step time and tokens/s, and the peak tensor bytes per rank.
//   3. The all-to-all bytes each rank sends per layer at T = --t0 * P (they stay constant when T
//      and P grow together), measured by the attention's counters.
//
//   mpirun -np P bench_ulysses [--budget_mib 384] [--budget_124m_mib 4096] [--t0 512] [--B 1]
// Trained: L=4, NH=8, C=256, vocab 256, max_seq_len 32768; estimated also: GPT-2 124M with
// max_seq_len 32768.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/engine.h"
#include "core/model/gpt2.h"
#include "core/philox.h"
#include "core/threads.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"
#include "parallel/ulysses.h"

using namespace memtrain;
using Clock = std::chrono::steady_clock;

namespace {

// The model this run trains; the estimate table covers the GPT-2 124M shape too.
const core::GPT2Config kConfig{
    .max_seq_len = 32768, .vocab_size = 256, .n_layer = 4, .n_head = 8, .n_embd = 256};
const core::GPT2Config k124M{
    .max_seq_len = 32768, .vocab_size = 50257, .n_layer = 12, .n_head = 12, .n_embd = 768};

// Tensor bytes of rank 0 (which holds the most tokens) of P when training at global length T.
int64_t BytesAt(const core::GPT2Config& cfg, int B, int64_t T, int P) {
  const int64_t Tr = parallel::SplitCount(T, P, 0);
  const core::ModelMode mode = core::ModelMode::kTrainRecompute;
  auto e = core::GPT2::EstimateMemory(cfg, {.B = B, .T = static_cast<int>(Tr), .mode = mode});
  if (!e.ok()) return INT64_MAX;
  int64_t total = 0;
  for (int64_t b : e->bytes) total += b;
  total += 2 * (*e)[core::MemoryTag::kParams];  // AdamW's m and v
  if (P > 1) {
    const parallel::UlyssesBytes u =
        parallel::UlyssesAttention::Estimate({.B = B,
                                              .T = Tr,
                                              .C = kConfig.n_embd,
                                              .NH = kConfig.n_head,
                                              .n_layer = kConfig.n_layer,
                                              .mode = mode,
                                              .device = core::Device::Cpu()},
                                             T, P, 0, {});
    total += u.activations + u.scratch;
  }
  return total;
}

// The longest T (a multiple of P, at most max_seq_len) whose bytes fit the budget; 0 if none.
int64_t LongestT(const core::GPT2Config& cfg, int B, int P, int64_t budget) {
  int64_t lo = 0, hi = cfg.max_seq_len / P;  // in units of P tokens
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (BytesAt(cfg, B, mid * P, P) <= budget) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo * P;
}

struct StepFigures {
  double seconds = 0;
  int64_t peak = 0;
  parallel::AllToAllCounters counters;
};

// One warm-up and `steps` timed training steps at global length T over `comm`.
absl::StatusOr<StepFigures> Train(parallel::Communicator* comm, int B, int64_t T, int steps) {
  core::ResetPeakMemory(core::Device::Cpu());
  const int64_t base = core::GetMemoryStats(core::Device::Cpu()).current;
  parallel::UlyssesAttention ul(comm, T, {});
  MT_ASSIGN_OR_RETURN(std::unique_ptr<core::GPT2> model, core::GPT2::Create(kConfig));
  model->InitWeights(1);
  if (comm->size() > 1) model->set_attention(&ul);
  const int Tr = static_cast<int>(comm->size() > 1 ? ul.local_T() : T);
  MT_RETURN_IF_ERROR(model->Prepare({.B = B, .T = Tr, .mode = core::ModelMode::kTrainRecompute}));
  MT_ASSIGN_OR_RETURN(auto opt, optim::AdamW::Create(model.get(), {.lr = 1e-4f}));
  std::vector<int32_t> in(B * T), tg(B * T), lin, ltg;
  for (int64_t i = 0; i < B * T; ++i) {
    in[i] = static_cast<int32_t>(core::PhiloxUniform(2, 0, i) * kConfig.vocab_size);
    tg[i] = static_cast<int32_t>(core::PhiloxUniform(2, 1, i) * kConfig.vocab_size);
  }
  const core::Batch global{in.data(), tg.data(), B, static_cast<int>(T)};
  core::Engine engine(model.get());
  StepFigures f;
  std::vector<double> times;
  for (int s = 0; s <= steps; ++s) {
    ul.ResetCounters();
    MT_RETURN_IF_ERROR(comm->Barrier().Wait());
    const auto t0 = Clock::now();
    engine.ZeroGrad();
    if (comm->size() > 1) {
      MT_ASSIGN_OR_RETURN(
          parallel::ShardedLoss l,
          parallel::ForwardSharded(engine, global, ul, core::Pass::kTrainForward, &lin, &ltg));
      MT_RETURN_IF_ERROR(engine.Backward(
          l.local,
          static_cast<float>(double(l.valid_local) / std::max<int64_t>(1, l.valid_global))));
      for (int b = 0; b < model->num_stages(); ++b) {
        const core::Tensor& g = model->block(b).grads();
        MT_RETURN_IF_ERROR(
            comm->AllReduce(g.f32(), g.numel(), core::DType::kF32, parallel::ReduceOp::kSum)
                .Wait());
      }
    } else {
      MT_RETURN_IF_ERROR(engine.Forward(global));
      MT_RETURN_IF_ERROR(engine.Backward(global));
    }
    opt->Step();
    MT_RETURN_IF_ERROR(comm->Barrier().Wait());
    if (s > 0) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    f.counters = ul.counters();
  }
  std::sort(times.begin(), times.end());
  f.seconds = times[times.size() / 2];
  f.peak = core::GetMemoryStats(core::Device::Cpu()).peak - base;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t budget_mib = 384, budget_124m_mib = 4096, t0 = 512;
  int B = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--budget_mib")) budget_mib = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--t0")) t0 = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--budget_124m_mib")) budget_124m_mib = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--B")) B = std::atoi(argv[i + 1]);
  }
  auto world = parallel::CreateWorldCommunicator();
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  parallel::Communicator* comm = world->get();
  const int P = comm->size(), threads = core::InitThreads();
  const bool root = comm->rank() == 0;
  const int64_t budget = budget_mib << 20;
  if (root) {
    std::printf("%d rank(s) x %d threads; B=%d, recompute, AdamW\n", P, threads, B);
    for (const auto& [cfg, mib] :
         {std::pair{kConfig, budget_mib}, std::pair{k124M, budget_124m_mib}}) {
      std::printf("\n%s: longest trainable T at %lld MiB per rank (exact estimate):\n",
                  core::GPT2::Create(cfg).value()->config().ToString().c_str(),
                  static_cast<long long>(mib));
      const int64_t one = LongestT(cfg, B, 1, mib << 20);
      for (int p : {1, 2, 4, 8}) {
        const int64_t t = LongestT(cfg, B, p, mib << 20);
        std::printf("  P=%d: T=%lld (%.2fx P=1)\n", p, static_cast<long long>(t),
                    one > 0 ? double(t) / one : 0.0);
      }
    }
  }
  const int64_t T = LongestT(kConfig, B, P, budget);
  core::SetMemoryBudget(core::Device::Cpu(), budget);
  absl::StatusOr<StepFigures> at_max = Train(comm, B, T, 1);
  core::SetMemoryBudget(core::Device::Cpu(), 0);
  if (root) {
    if (at_max.ok()) {
      std::printf(
          "\nthis run, P=%d at T=%lld under the budget: step %.2f s, %.0f tokens/s, peak %.1f MiB "
          "of %lld per rank\n",
          P, static_cast<long long>(T), at_max->seconds, B * T / at_max->seconds,
          at_max->peak / 1048576.0, static_cast<long long>(budget_mib));
    } else {
      std::printf("\nthis run, P=%d at T=%lld: %s\n", P, static_cast<long long>(T),
                  at_max.status().ToString().c_str());
    }
  }
  absl::StatusOr<StepFigures> scaled = Train(comm, B, t0 * P, 1);
  if (root && scaled.ok()) {
    std::printf(
        "T=%lld (t0 x P): step %.2f s, %.0f tokens/s; all-to-all per layer and step: sent %lld "
        "B, received %lld B per rank\n",
        static_cast<long long>(t0 * P), scaled->seconds, B * t0 * P / scaled->seconds,
        static_cast<long long>(scaled->counters.sent_bytes / kConfig.n_layer),
        static_cast<long long>(scaled->counters.received_bytes / kConfig.n_layer));
  }
  const bool ok = at_max.ok() && scaled.ok();
  world->reset();
  parallel::ShutdownCommunication();
  return ok ? 0 : 1;
}
