#include "launcher/train.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "core/data_loader.h"
#include "core/llmc.h"
#include "core/threads.h"
#include "launcher/agree.h"
#include "launcher/checkpoint.h"
#include "launcher/make_optimizer.h"
#include "launcher/spec.h"
#include "optim/schedule.h"
#include "parallel/data_parallel.h"
#include "parallel/process_grid.h"

namespace memtrain::launcher {
namespace {

using Clock = std::chrono::steady_clock;

std::string Hms(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

// Everything a rank builds before the first collective of the loop.
struct Setup {
  std::unique_ptr<core::GPT2> model;
  std::optional<core::TokenFile> train_tokens, val_tokens;
  std::optional<core::DataLoader> train, val;
  std::unique_ptr<optim::Optimizer> opt;
  TrainState state;
};

absl::Status CheckSameModel(const core::GPT2Config& want, const core::GPT2Config& got,
                            const std::string& from) {
  auto check = [&](const char* field, int a, int b) -> absl::Status {
    if (a == b) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrFormat(
        "model.gpt.%s = %d but %s has %d; resume with the job that wrote the checkpoint", field, a,
        from, b));
  };
  MT_RETURN_IF_ERROR(check("n_layer", want.n_layer, got.n_layer));
  MT_RETURN_IF_ERROR(check("n_head", want.n_head, got.n_head));
  MT_RETURN_IF_ERROR(check("n_embd", want.n_embd, got.n_embd));
  MT_RETURN_IF_ERROR(check("vocab_size", want.vocab_size, got.vocab_size));
  MT_RETURN_IF_ERROR(check("max_seq_len", want.max_seq_len, got.max_seq_len));
  return absl::OkStatus();
}

absl::Status BuildSetup(const Job& job, const TrainOptions& options, int data_rank, int data_size,
                        Setup* s) {
  const Train& t = job.train();
  std::optional<LoadedCheckpoint> ckpt;
  if (options.resume) {
    if (job.checkpoint().dir().empty()) {
      return absl::InvalidArgumentError(
          "--resume needs checkpoint.dir: the folder the interrupted run saved into");
    }
    MT_ASSIGN_OR_RETURN(std::string folder, LatestCheckpoint(job.checkpoint().dir()));
    MT_ASSIGN_OR_RETURN(ckpt, LoadCheckpoint(folder));
    if (job.model().has_gpt()) {
      core::GPT2Config want = ToGPT2Config(job.model().gpt());
      MT_RETURN_IF_ERROR(want.Validate());
      MT_RETURN_IF_ERROR(CheckSameModel(want, ckpt->model->config(), folder));
    }
    s->model = std::move(ckpt->model);
    s->state = ckpt->state;
    if (s->state.step >= t.steps()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "train.steps = %d but checkpoint %s is already at step %d; raise train.steps to train "
          "further",
          t.steps(), folder, s->state.step));
    }
  } else if (!job.model().init_from().empty()) {
    MT_ASSIGN_OR_RETURN(s->model, LoadModel(job.model().init_from()));
  } else {
    MT_ASSIGN_OR_RETURN(s->model, core::GPT2::Create(ToGPT2Config(job.model().gpt())));
    s->model->InitWeights(job.model().init_seed());
  }
  MT_RETURN_IF_ERROR(s->model->Prepare(t.batch_size(), t.seq_len()));
  const int vocab = s->model->config().vocab_size;

  MT_ASSIGN_OR_RETURN(s->train_tokens, core::TokenFile::Open(job.data().train_tokens()));
  MT_RETURN_IF_ERROR(s->train_tokens->CheckVocab(vocab));
  std::optional<uint64_t> shuffle;
  if (job.data().shuffle()) shuffle = job.data().seed();
  MT_ASSIGN_OR_RETURN(
      s->train, core::DataLoader::Create(&*s->train_tokens, t.batch_size(), t.seq_len(), data_rank,
                                         data_size, shuffle));
  if (!job.data().val_tokens().empty()) {
    MT_ASSIGN_OR_RETURN(s->val_tokens, core::TokenFile::Open(job.data().val_tokens()));
    MT_RETURN_IF_ERROR(s->val_tokens->CheckVocab(vocab));
    MT_ASSIGN_OR_RETURN(s->val, core::DataLoader::Create(&*s->val_tokens, t.batch_size(),
                                                         t.seq_len(), data_rank, data_size));
  }
  s->train->Seek(s->state.batches_consumed);

  MT_ASSIGN_OR_RETURN(s->opt, MakeOptimizer(job.optimizer(), s->model.get()));
  if (ckpt) {
    MT_RETURN_IF_ERROR(RestoreOptimizer(*ckpt, *s->model, s->opt.get()));
  }
  s->state.job_text = JobToText(job);
  return absl::OkStatus();
}

// Rank 0's output: a progress line (redrawn in place on a terminal) and JSON Lines metrics.
class Reporter {
 public:
  // On resume, the metrics file keeps the lines up to `resume_step` (an interrupted run may have
  // logged steps after its last checkpoint; those are trained again).
  absl::Status Open(const Job& job, std::optional<int64_t> resume_step, bool quiet) {
    tty_ = isatty(fileno(stdout));
    quiet_ = quiet;
    const std::string& path = job.output().metrics();
    if (path.empty()) return absl::OkStatus();
    std::error_code ec;
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    std::string kept;
    if (resume_step) {
      std::ifstream in(path);
      for (std::string line; std::getline(in, line);) {
        int64_t step = 0;
        const size_t at = line.find("\"step\": ");
        if (at != std::string::npos &&
            absl::SimpleAtoi(line.substr(at + 8, line.find_first_of(",}", at) - at - 8), &step) &&
            step > *resume_step) {
          continue;
        }
        kept += line + "\n";
      }
    }
    metrics_ = std::fopen(path.c_str(), "w");
    if (metrics_ != nullptr) std::fputs(kept.c_str(), metrics_);
    if (metrics_ == nullptr) {
      return absl::PermissionDeniedError(
          absl::StrFormat("output.metrics = \"%s\": cannot open it for writing", path));
    }
    return absl::OkStatus();
  }
  ~Reporter() {
    if (metrics_) std::fclose(metrics_);
  }
  void Json(const std::string& line) {
    if (metrics_ == nullptr) return;
    std::fprintf(metrics_, "%s\n", line.c_str());
    std::fflush(metrics_);
  }
  void Progress(const std::string& line, bool keep) {
    if (quiet_) return;
    if (tty_) {
      std::printf("\r\x1b[K%s%s", line.c_str(), keep ? "\n" : "");
    } else if (keep) {
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
  }
  void Line(const std::string& line) {
    if (quiet_) return;
    std::printf("%s%s\n", tty_ ? "\r\x1b[K" : "", line.c_str());
    std::fflush(stdout);
  }

 private:
  bool tty_ = false, quiet_ = false;
  std::FILE* metrics_ = nullptr;
};

}  // namespace

absl::Status RunTraining(const Job& job, const TrainOptions& options,
                         parallel::Communicator* world) {
  const Parallel& par = job.parallel();
  MT_ASSIGN_OR_RETURN(parallel::ProcessGrid grid,
                      parallel::ProcessGrid::Create(world, {.data = par.data(),
                                                            .sequence = par.sequence(),
                                                            .perturbation = par.perturbation()}));
  const int D = grid.data().size(), rank = world->rank();
  Setup s;
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, BuildSetup(job, options, grid.data_rank(), D, &s)));
  // Only now that every rank can run is the metrics file created (or truncated).
  Reporter report;
  absl::Status opened;
  if (rank == 0) {
    opened = report.Open(job, options.resume ? std::optional<int64_t>(s.state.step) : std::nullopt,
                         options.quiet);
  }
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, opened));

  const Train& t = job.train();
  const int B = t.batch_size(), T = t.seq_len(), accum = t.grad_accum();
  const Schedule& sch = job.schedule();
  optim::LrSchedule lr_at{.peak = PeakLr(job.optimizer()),
                          .warmup_steps = sch.warmup_steps(),
                          .total_steps = t.steps(),
                          .decay = sch.decay() == Schedule::COSINE   ? optim::Decay::kCosine
                                   : sch.decay() == Schedule::LINEAR ? optim::Decay::kLinear
                                                                     : optim::Decay::kConstant,
                          .min_ratio = sch.min_lr_ratio()};
  core::Engine engine(s.model.get());
  parallel::DataParallelHooks ddp(&grid.data());
  engine.AddHooks(&ddp);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const core::Batch batch{inputs.data(), targets.data(), B, T};
  const int64_t tokens_per_step = static_cast<int64_t>(B) * T * accum * D;
  const int64_t last_step =
      options.stop_after > 0 ? std::min<int64_t>(options.stop_after, t.steps()) : t.steps();
  if (rank == 0) {
    report.Line(absl::StrFormat(
        "%s, %d parameters; %d data rank(s) x %d threads; global batch %d tokens; "
        "%s state %.1f MiB%s",
        s.model->config().ToString(), s.model->num_parameters(), D, core::GetThreads(),
        tokens_per_step, s.opt->name(), s.opt->state_bytes() / 1048576.0,
        options.resume ? absl::StrFormat("; resuming at step %d", s.state.step) : ""));
    report.Json(absl::StrFormat(
        R"({"event": "start", "step": %d, "params": %d, "opt_state_bytes": %d, "world": %d})",
        s.state.step, s.model->num_parameters(), s.opt->state_bytes(), world->size()));
  }

  auto evaluate = [&]() -> absl::StatusOr<double> {
    const int per_rank = (t.eval_batches() + D - 1) / D;
    MT_ASSIGN_OR_RETURN(float local_loss, core::EvaluateLoss(engine, *s.val, per_rank));
    double sum = local_loss;
    MT_RETURN_IF_ERROR(
        grid.data().AllReduce(&sum, 1, core::DType::kF64, parallel::ReduceOp::kSum).Wait());
    return sum / D;
  };

  const auto t_start = Clock::now();
  const int64_t first_step = s.state.step;
  for (int64_t step = first_step; step < last_step; ++step) {
    const auto t0 = Clock::now();
    const float lr = lr_at.At(step);
    engine.ZeroGrad();
    double loss = 0.0;
    for (int micro = 0; micro < accum; ++micro) {
      s.train->Next(inputs.data(), targets.data());
      MT_ASSIGN_OR_RETURN(float l, engine.Forward(batch));
      loss += l;
      ddp.set_sync(micro == accum - 1);
      engine.Backward(batch, 1.0f / (static_cast<float>(D) * accum));
    }
    const auto t_wait = Clock::now();
    MT_RETURN_IF_ERROR(ddp.Wait());
    const double wait_ms = 1e3 * std::chrono::duration<double>(Clock::now() - t_wait).count();
    loss /= accum;
    MT_RETURN_IF_ERROR(
        grid.data().AllReduce(&loss, 1, core::DType::kF64, parallel::ReduceOp::kSum).Wait());
    loss /= D;
    if (!std::isfinite(loss)) {
      // Every rank sees the same all-reduced loss, so all stop here together.
      return absl::InternalError(absl::StrFormat(
          "the training loss is %f at step %d; lower the learning rate, add warm-up or set "
          "optimizer.clip_grad_norm (the last checkpoint, if any, is intact)",
          loss, step + 1));
    }
    // The gradients are all-reduced: every rank computes the same global norm.
    const float clip = job.optimizer().clip_grad_norm();
    const bool log = rank == 0 && ((step + 1) % t.log_every() == 0 || step + 1 == last_step);
    const double grad_norm = (clip > 0 || log) ? optim::GlobalGradNorm(*s.model) : 0.0;
    MT_RETURN_IF_ERROR(s.opt->set_lr(lr));
    s.opt->Step(optim::ClipScale(grad_norm, clip));
    s.state.step = step + 1;
    s.state.batches_consumed = s.train->batches_consumed();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
    const double eta = elapsed / (step + 1 - first_step) * (last_step - step - 1);

    if (rank == 0) {
      if (log) {
        report.Json(absl::StrFormat(
            R"({"step": %d, "loss": %.9g, "lr": %.9g, "tokens_per_sec": %.1f, "step_ms": %.3f, )"
            R"("comm_wait_ms": %.3f, "grad_norm": %.6g})",
            step + 1, loss, lr, tokens_per_step / dt, 1e3 * dt, wait_ms, grad_norm));
      }
      report.Progress(
          absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | "
                          "%.0f ms/step | ETA %s",
                          step + 1, t.steps(), loss, lr, tokens_per_step / dt, 1e3 * dt, Hms(eta)),
          log);
    }
    const bool final_step = step + 1 == last_step;
    if (s.val && ((t.eval_every() > 0 && (step + 1) % t.eval_every() == 0) || final_step)) {
      MT_ASSIGN_OR_RETURN(double val, evaluate());
      if (rank == 0) {
        report.Json(absl::StrFormat(R"({"step": %d, "val_loss": %.9g})", step + 1, val));
        report.Line(absl::StrFormat("step %d/%d | val_loss %.4f", step + 1, t.steps(), val));
      }
    }
    const Checkpoint& c = job.checkpoint();
    if (!c.dir().empty() && ((c.every() > 0 && (step + 1) % c.every() == 0) || final_step)) {
      absl::Status saved = rank == 0 ? SaveCheckpoint(c.dir(), c.keep(), s.state, *s.model, *s.opt)
                                     : absl::OkStatus();
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, saved));
      if (rank == 0) {
        report.Line(absl::StrFormat("step %d/%d | checkpoint %s/step_%08d", step + 1, t.steps(),
                                    c.dir(), step + 1));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace memtrain::launcher
