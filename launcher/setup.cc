#include <filesystem>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/allocator.h"
#include "core/cuda.h"
#include "launcher/field_names.h"
#include "launcher/loop.h"
#include "launcher/make_optimizer.h"
#include "launcher/spec.h"

namespace memtrain::launcher {
namespace {

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

}  // namespace

// A damaged newest checkpoint: say how to resume from an older one.
absl::Status WithOlderCheckpoints(const absl::Status& s, const std::string& dir,
                                  const std::string& damaged) {
  if (s.code() != absl::StatusCode::kDataLoss) return s;
  std::string older;
  for (const std::string& f : checkpoint::ListCheckpoints(dir)) {
    if (f != damaged) {
      older = f;
      break;
    }
  }
  return absl::DataLossError(absl::StrCat(
      s.message(), older.empty()
                       ? absl::StrFormat("; no other checkpoint is in %s: run without --resume to "
                                         "start over",
                                         dir)
                       : absl::StrFormat("; to resume from the one before it, run with "
                                         "--resume_from %s instead of --resume",
                                         older)));
}

// The GPU of this rank: its index among the ranks of its node (as the MPI launcher numbers
// them) modulo the node's GPUs.
absl::StatusOr<core::Device> TrainDevice(const Train& t) {
  if (t.device() != "cuda") return core::Device::Cpu();
  int local = 0;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    if (const char* v = std::getenv(var); v != nullptr) {
      local = std::atoi(v);
      break;
    }
  }
  const int gpus = core::CudaDeviceCount();
  if (gpus == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("train.device = \"cuda\" but %s; set train.device = \"cpu\"",
                        core::CudaUnavailableReason()));
  }
  const int index = local % gpus;
  MT_RETURN_IF_ERROR(core::InitCuda(index));
  return core::Device::Cuda(index);
}

// The same weights on `device` (models are read and initialised on the host).
absl::StatusOr<std::unique_ptr<core::GPT2>> ToDevice(std::unique_ptr<core::GPT2> m,
                                                     core::Device device) {
  if (m->block(0).device() == device) return m;
  MT_ASSIGN_OR_RETURN(std::unique_ptr<core::GPT2> out, core::GPT2::Create(m->config(), device));
  core::Backend& be = core::BackendFor(device);
  for (int s = 0; s < m->num_stages(); ++s) {
    be.CopyFromHost(core::ExecContext::For(device), out->block(s).params().raw(),
                    m->block(s).params().raw(), m->block(s).params().nbytes());
  }
  return out;
}

absl::Status OpenData(const Job& job, int vocab, int data_rank, int data_size, Setup* s) {
  const Train& t = job.train();
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
  return absl::OkStatus();
}

absl::Status ValidateData(const Job& job, int data_rank, int data_size) {
  MT_ASSIGN_OR_RETURN(std::optional<core::GPT2Config> config,
                      JobModelConfig(job, /*load_folder=*/true));
  if (!config) return absl::OkStatus();  // no model: ValidateJob has refused the job already
  Setup s;
  return OpenData(job, config->vocab_size, data_rank, data_size, &s);
}

absl::Status BuildSetup(const Job& job, const TrainOptions& options, int data_rank, int data_size,
                        core::ModelMode mode, Setup* s, parallel::Communicator* sequence) {
  const Train& t = job.train();
  std::optional<LoadedCheckpoint> ckpt;
  if (options.resume || !options.resume_from.empty()) {
    std::string folder = options.resume_from;
    if (folder.empty()) {
      if (job.checkpoint().dir().empty()) {
        return absl::InvalidArgumentError(
            "--resume needs checkpoint.dir: the folder the interrupted run saved into");
      }
      absl::StatusOr<std::string> latest = LatestCheckpoint(job.checkpoint().dir());
      if (!latest.ok()) return WithOlderCheckpoints(latest.status(), job.checkpoint().dir(), "");
      folder = *latest;
    } else if (!std::filesystem::is_regular_file(folder + "/state.json")) {
      return absl::NotFoundError(absl::StrFormat(
          "--resume_from %s: not a checkpoint folder (no state.json); give one of the "
          "step_NNNNNNNN folders of checkpoint.dir",
          folder));
    }
    absl::StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(folder);
    if (!loaded.ok()) {
      return options.resume_from.empty()
                 ? WithOlderCheckpoints(loaded.status(), job.checkpoint().dir(), folder)
                 : loaded.status();
    }
    ckpt = std::move(*loaded);
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
  // A model read from a checkpoint folder (model.init_from, or --resume without model.gpt): its
  // sizes are known only now; check the memory the rest needs before allocating it.
  if (!job.model().has_gpt()) {
    MT_ASSIGN_OR_RETURN(std::optional<core::GPT2Config> known,
                        JobModelConfig(job, /*load_folder=*/false));
    if (!known) {
      MT_ASSIGN_OR_RETURN(MemoryNeed need, EstimateJobMemory(job, s->model->config()));
      MT_RETURN_IF_ERROR(CheckMemory(job, need, core::GetMemoryStats(core::Device::Cpu()).current));
    }
  }
  MT_ASSIGN_OR_RETURN(const core::Device device, TrainDevice(t));
  MT_ASSIGN_OR_RETURN(s->model, ToDevice(std::move(s->model), device));
  MT_RETURN_IF_ERROR(core::BackendFor(device).SetComputePrecision(
      t.precision() == Train::BF16 ? core::ComputePrecision::kBf16 : core::ComputePrecision::kF32));
  int T = t.seq_len();
  // Checked here for a model read from a file (a model.gpt spec is checked with the job): a
  // sequence-parallel rank prepares only its share of T, which would hide it.
  if (T > s->model->config().max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "train.seq_len = %d exceeds the model's max_seq_len = %d (model.init_from or the "
        "checkpoint); lower train.seq_len",
        T, s->model->config().max_seq_len));
  }
  if (sequence != nullptr && sequence->size() > 1) {
    s->ulysses = std::make_unique<parallel::UlyssesAttention>(
        sequence, T,
        parallel::UlyssesOptions{.keep_exchanged = job.parallel().sequence_keep_exchanged()});
    s->model->set_attention(s->ulysses.get());
    T = static_cast<int>(s->ulysses->local_T());
  }
  MT_RETURN_IF_ERROR(s->model->Prepare({.B = t.batch_size(), .T = T, .mode = mode}));
  const int vocab = s->model->config().vocab_size;

  MT_RETURN_IF_ERROR(OpenData(job, vocab, data_rank, data_size, s));
  s->train->Seek(s->state.batches_consumed);

  const Offload& off = job.offload();
  const bool offload = off.tier() != Offload::NONE;
  MT_ASSIGN_OR_RETURN(
      s->opt, MakeOptimizer(job.optimizer(), s->model.get(),
                            offload && off.optimizer_on_host() ? optim::StateAllocation::kLater
                                                               : optim::StateAllocation::kNow));
  if (offload) {
    offload::StreamerOptions so;
    so.tier = off.tier() == Offload::SSD ? offload::Tier::kSsd : offload::Tier::kHost;
    so.ssd_path = off.ssd_path();
    so.rank = data_rank;
    so.io_engine = off.io_engine() == Offload::THREADS ? offload::IoEngine::kThreads
                                                       : offload::IoEngine::kUring;
    so.queue_depth = off.queue_depth();
    so.resident_blocks = off.resident_blocks();
    so.swap_batch = off.swap_batch();
    so.prefetch_depth = off.prefetch_depth();
    so.optimizer_on_host = off.optimizer_on_host();
    so.gradients = !job.optimizer().has_zo();
    so.piece_bytes = static_cast<int64_t>(off.piece_mib()) << 20;
    absl::StatusOr<std::unique_ptr<offload::LayerStreamer>> streamer =
        offload::LayerStreamer::Create(s->model.get(), s->opt.get(), so);
    if (!streamer.ok()) return ToJobSpecNames(streamer.status());
    s->streamer = std::move(*streamer);
  }
  if (ckpt) {
    if (s->streamer) MT_RETURN_IF_ERROR(s->streamer->BindHostCopies());
    absl::Status restored = RestoreOptimizer(*ckpt, *s->model, s->opt.get());
    if (s->streamer) restored.Update(s->streamer->UnbindHostCopies(/*write_back=*/true));
    MT_RETURN_IF_ERROR(restored);
  }
  s->state.job_text = JobToText(job);
  return absl::OkStatus();
}

}  // namespace memtrain::launcher

namespace memtrain::launcher {

absl::Status ApplyDeviceBudget(const Job& job, Setup& s) {
  const Offload& off = job.offload();
  if (off.tier() == Offload::NONE || off.device_budget_mib() <= 0) return absl::OkStatus();
  // Everything the device holds is allocated by now (resident blocks, the window, activations,
  // scratch): the budget must hold it, and then limits the run.
  const core::Device device = s.model->block(0).device();
  const int64_t budget = static_cast<int64_t>(off.device_budget_mib()) << 20;
  const core::MemoryStats m = core::GetMemoryStats(device);
  const int64_t need_mib = (m.current + (1 << 20) - 1) >> 20;
  if (m.current > budget) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "offload.device_budget_mib = %d is too small: this job needs %d MiB on the device (%s of "
        "window for offload.resident_blocks = %d, the embedding and head, activations and "
        "scratch); the smallest budget that works is offload.device_budget_mib: %d; or lower "
        "offload.resident_blocks or train.batch_size",
        off.device_budget_mib(), need_mib, FormatBytes(s.streamer->window_bytes()),
        off.resident_blocks(), need_mib));
  }
  core::SetMemoryBudget(device, budget);
  return absl::OkStatus();
}

}  // namespace memtrain::launcher
