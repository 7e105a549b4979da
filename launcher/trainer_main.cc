// trainer: runs memtrain jobs (a job with a `federated` section runs FedAvg rounds of a CNN on
// Fashion-MNIST, launcher/federated.h; any other the token training loop, launcher/train.h).
//
//   mpirun -np N trainer JOB.pbtxt [--set field.path=value ...] [--check] [--resume]
//                  [--resume_from CHECKPOINT_FOLDER] [--stop_after N] [--quiet]
//   trainer sample CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature X] [--top_k K]
//                  [--seed S] [--vocab FILE]
//   trainer export CHECKPOINT OUT.bin [--force]
//
// Exit codes: 0 done; 2 bad input (usage, job spec, files), nothing written; 1 failure while
// running; 128 + N stopped by signal N (SIGTERM, SIGINT) after a step, with a checkpoint.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint.h"
#include "core/llmc.h"
#include "core/threads.h"
#include "launcher/agree.h"
#include "launcher/federated.h"
#include "launcher/sample.h"
#include "launcher/spec.h"
#include "launcher/train.h"
#include "parallel/communicator.h"

namespace memtrain::launcher {

using checkpoint::LoadModel;

namespace {

// The watchdog's timeout while the ranks parse, check files and set up (a large model or data
// file takes a while on a slow disk); the job's parallel.collective_timeout_s applies after.
constexpr float kStartupCollectiveTimeoutS = 600.0f;

constexpr char kUsage[] = R"(usage:
  trainer JOB.pbtxt [options]          train (under mpirun -np N for N ranks)
  trainer sample CHECKPOINT [options]  generate text from a checkpoint
  trainer export CHECKPOINT OUT.bin [--force]
                                       write a checkpoint as an llm.c model file (an existing
                                       OUT.bin only with --force)

train options:
  --set field.path=value   override a field of the job, e.g. --set train.steps=10 (repeatable)
  --check                  validate the job, its data and its memory estimate as a run would,
                           print the estimate and the effective spec; run nothing
  --resume                 continue from checkpoint.dir/latest
  --resume_from FOLDER     continue from this checkpoint folder (checkpoint.dir/step_NNNNNNNN),
                           e.g. an older one when the newest is damaged
  --stop_after N           end the run after step N, saving a checkpoint (as if preempted)
                           (SIGTERM or SIGINT do the same after the current step; exit 128+N)
  --quiet                  no progress output (metrics are still written)

sample options:
  --prompt TEXT  (default "\n")   --tokens N (default 256)   --temperature X (default 0.8)
  --top_k K (default 0 = all)     --seed S (default 1)
  --vocab FILE   the BPE vocabulary of the data (make_tokens --bpe); default: byte-level

CHECKPOINT is a checkpoint folder (checkpoint.dir/step_NNNNNNNN), a checkpoint.dir (its newest
checkpoint), or an llm.c model file. The job spec reference is docs/job-spec.md.
)";

int ExitCode(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kResourceExhausted:
      return 2;
    default:
      return 1;
  }
}

int Report(const absl::Status& s) {
  if (!s.ok() && !s.message().empty()) {
    std::fprintf(stderr, "trainer: %s\n", std::string(s.message()).c_str());
  }
  return ExitCode(s);
}

// sample and export read GPT-2 checkpoints; a federated job's checkpoint (a CNN) is refused by
// name instead of as an unreadable one. `path`: a checkpoint folder or a checkpoint.dir.
absl::Status RefuseFederatedCheckpoint(const std::string& path, const char* what) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return absl::OkStatus();
  std::string folder = path;
  if (!std::filesystem::exists(path + "/state.json", ec)) {
    absl::StatusOr<std::string> latest = checkpoint::LatestCheckpoint(path);
    if (!latest.ok()) return absl::OkStatus();  // LoadModel says what is wrong
    folder = *latest;
  }
  std::FILE* f = std::fopen((folder + "/state.json").c_str(), "r");
  if (f == nullptr) return absl::OkStatus();
  char head[4096];
  const size_t n = std::fread(head, 1, sizeof head, f);
  std::fclose(f);
  if (std::string(head, n).find("\"memtrain-federated/1\"") == std::string::npos) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s: %s is a checkpoint of a federated job (a CNN); %s works on GPT-2 checkpoints only "
      "(its weights are plain safetensors: %s/model.safetensors)",
      what, folder, what, folder));
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "trainer: %s\n\n%s", why.c_str(), kUsage);
  return 2;
}

int RunJob(const std::vector<std::string>& args) {
  std::string path;
  std::vector<std::string> sets;
  bool check = false;
  TrainOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--set" && i + 1 < args.size()) {
      sets.push_back(args[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else if (a == "--check") {
      check = true;
    } else if (a == "--resume") {
      options.resume = true;
    } else if (a == "--resume_from" && i + 1 < args.size()) {
      options.resume_from = args[++i];
      options.resume = true;
    } else if (a == "--quiet") {
      options.quiet = true;
    } else if (a == "--stop_after" && i + 1 < args.size()) {
      if (!absl::SimpleAtoi(args[++i], &options.stop_after) || options.stop_after < 1) {
        return Usage("--stop_after takes a step number >= 1");
      }
    } else if (!a.empty() && a[0] == '-') {
      return Usage("unknown option " + a);
    } else if (path.empty()) {
      path = a;
    } else {
      return Usage("more than one job file: " + path + " and " + a);
    }
  }
  if (path.empty()) return Usage("no job file given");

  absl::StatusOr<std::unique_ptr<parallel::Communicator>> world =
      parallel::CreateWorldCommunicator();
  if (!world.ok()) return Report(world.status());
  core::InitThreads();
  // Until the job is known: a generous watchdog for start-up (ranks parse and check files).
  parallel::SetCollectiveTimeout(kStartupCollectiveTimeoutS);

  // Every rank parses and validates the whole spec and its files before any other collective
  // (rank 0 also checks that it can write the checkpoints and metrics); AgreeOnJob makes all
  // ranks stop if any one cannot go on, or if the ranks disagree about the job.
  absl::StatusOr<Job> job = ParseJobFile(path);
  absl::Status local = job.status();
  for (size_t i = 0; local.ok() && i < sets.size(); ++i) local = ApplyOverride(&*job, sets[i]);
  if (local.ok()) {
    FillDefaults(&*job);
    local = ValidateJob(*job, (*world)->size());
  }
  if (local.ok()) local = ValidateFiles(*job);
  // The memory the job will allocate, from the spec, before anything is allocated (a model read
  // from a checkpoint folder is checked once it is loaded; --check loads it now).
  std::optional<MemoryNeed> need;
  if (local.ok() && job->has_federated()) {  // model.cnn, Fashion-MNIST and FedAvg's buffers
    absl::StatusOr<MemoryNeed> estimate = EstimateFederatedJobMemory(*job, (*world)->size());
    local = estimate.status();
    if (local.ok()) {
      need = *estimate;
      local = CheckMemory(*job, *need);
    }
  } else if (local.ok()) {
    absl::StatusOr<std::optional<core::GPT2Config>> config =
        JobModelConfig(*job, /*load_folder=*/check);
    local = config.status();
    if (local.ok() && config->has_value()) {
      absl::StatusOr<MemoryNeed> estimate = EstimateJobMemory(*job, **config);
      local = estimate.status();
      if (local.ok()) {
        need = *estimate;
        local = CheckMemory(*job, *need);
      }
    }
  }
  // --check also runs the data checks of the run (vocabulary, one batch per data rank).
  // A federated job: Fashion-MNIST read and the client partition drawn, as the run does.
  if (local.ok() && check) {
    local = job->has_federated() ? ValidateFederatedData(*job)
                                 : ValidateData(*job, (*world)->rank(), (*world)->size());
  }
  if (local.ok() && (*world)->rank() == 0) local = ValidateOutputs(*job);
  // The options that change what the ranks do together (not --quiet).
  const std::string together =
      absl::StrCat(check ? "--check " : "", options.resume ? "--resume " : "",
                   options.resume_from.empty() ? "" : "--resume_from " + options.resume_from + " ",
                   options.stop_after > 0 ? absl::StrCat("--stop_after ", options.stop_after) : "");
  absl::Status agreed = AgreeOnJob(world->get(), local, local.ok() ? &*job : nullptr, together);
  if (agreed.ok() && check && (*world)->rank() == 0) {
    std::printf("# %s: valid for %d rank(s).\n", path.c_str(), (*world)->size());
    if (need) {
      const bool gpu = job->train().device() == "cuda";
      const AvailableMemory avail = HostMemoryAvailable();
      std::printf("# memory estimate per rank%s: %s; %s\n", gpu ? " (on the GPU)" : "",
                  need->ToString().c_str(),
                  gpu ? "not checked: the host check is skipped for train.device = \"cuda\""
                  : avail.bytes < 0
                      ? "available memory unknown"
                      : absl::StrFormat("available %s (%s)", FormatBytes(avail.bytes), avail.source)
                            .c_str());
    }
    std::printf("# Effective spec:\n%s", JobToText(*job).c_str());
  }
  if (agreed.ok() && !check) {
    const float t = job->parallel().collective_timeout_s();
    parallel::SetCollectiveTimeout(t > 0 ? std::max(t, kStartupCollectiveTimeoutS) : 0.0f);
    if (job->has_federated()) {  // FedAvg rounds of model.cnn instead of the token loop
      InstallStopHandlers(/*announce=*/(*world)->rank() == 0, "round");
      agreed = RunFederated(*job, options, world->get());
    } else {
      InstallStopHandlers(/*announce=*/(*world)->rank() == 0);
      agreed = RunTraining(*job, options, world->get());
    }
  }
  int code = Report(agreed);
  if (const int sig = StopSignal(agreed); sig != 0) code = 128 + sig;  // as a shell reports it
  world->reset();
  parallel::ShutdownCommunication();
  return code;
}

int RunSample(const std::vector<std::string>& args) {
  if (args.empty() || args[0][0] == '-') return Usage("sample needs a CHECKPOINT");
  SampleOptions o;
  std::string vocab_path;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has = i + 1 < args.size();
    bool ok = has;
    if (a == "--prompt" && has) {
      o.prompt = args[++i];
    } else if (a == "--tokens" && has) {
      ok = absl::SimpleAtoi(args[++i], &o.tokens) && o.tokens > 0;
    } else if (a == "--temperature" && has) {
      ok = absl::SimpleAtof(args[++i], &o.temperature) && o.temperature >= 0;
    } else if (a == "--top_k" && has) {
      ok = absl::SimpleAtoi(args[++i], &o.top_k) && o.top_k >= 0;
    } else if (a == "--seed" && has) {
      ok = absl::SimpleAtoi(args[++i], &o.seed);
    } else if (a == "--vocab" && has) {
      vocab_path = args[++i];
    } else {
      ok = false;
    }
    if (!ok) return Usage("bad sample option near " + a);
  }
  core::InitThreads();
  std::optional<core::Bpe> vocab;
  if (!vocab_path.empty()) {
    absl::StatusOr<core::Bpe> v = core::Bpe::Load(vocab_path);
    if (!v.ok()) return Report(v.status());
    vocab = std::move(*v);
    o.vocab = &*vocab;
  }
  if (absl::Status fed = RefuseFederatedCheckpoint(args[0], "sample"); !fed.ok()) {
    return Report(fed);
  }
  absl::StatusOr<std::unique_ptr<core::GPT2>> model = LoadModel(args[0]);
  if (!model.ok()) return Report(model.status());
  // Streamed: each token's bytes (NULs included) as soon as it is drawn.
  bool printed = false;
  int write_error = 0;
  o.on_text = [&](std::string_view piece) {
    printed = true;
    if (std::fwrite(piece.data(), 1, piece.size(), stdout) == piece.size() &&
        std::fflush(stdout) == 0) {
      return true;
    }
    write_error = errno;  // e.g. EPIPE where SIGPIPE is ignored: stop generating
    return false;
  };
  absl::StatusOr<std::string> text = Sample(**model, o);
  if (write_error != 0) {
    return Report(absl::UnavailableError(
        absl::StrFormat("sample: cannot write to stdout: %s", std::strerror(write_error))));
  }
  if (printed) std::fputc('\n', stdout);
  if (std::fflush(stdout) != 0) {
    return Report(absl::UnavailableError(
        absl::StrFormat("sample: cannot write to stdout: %s", std::strerror(errno))));
  }
  return Report(text.status());
}

int RunExport(const std::vector<std::string>& args) {
  std::vector<std::string> paths;
  bool force = false;
  for (const std::string& a : args) {
    if (a == "--force") {
      force = true;
    } else if (!a.empty() && a[0] == '-') {
      return Usage("unknown export option " + a);
    } else {
      paths.push_back(a);
    }
  }
  if (paths.size() != 2) return Usage("export needs CHECKPOINT and OUT.bin");
  const std::string& from = paths[0];
  const std::string& out = paths[1];
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(out, ec)) {
    return Report(absl::InvalidArgumentError(absl::StrFormat(
        "export: %s is a directory; give the path of the .bin file to write", out)));
  }
  if (!force && fs::exists(out, ec)) {
    // Most likely a mistake when it is a file of the checkpoint being exported (which the
    // export would destroy); any other existing file may still be wanted.
    const fs::path parent = fs::weakly_canonical(fs::absolute(out, ec).parent_path(), ec);
    const fs::path source = fs::weakly_canonical(fs::absolute(from, ec), ec);
    const bool own =
        fs::equivalent(out, from, ec) ||
        (fs::is_directory(source, ec) && (parent == source || parent.parent_path() == source));
    return Report(absl::FailedPreconditionError(absl::StrFormat(
        "export: %s exists%s; nothing was written: give another OUT.bin, or add --force to "
        "overwrite it",
        out,
        own ? absl::StrFormat(" and is a file of the checkpoint being exported (%s)", from) : "")));
  }
  if (absl::Status fed = RefuseFederatedCheckpoint(from, "export"); !fed.ok()) return Report(fed);
  absl::StatusOr<std::unique_ptr<core::GPT2>> model = LoadModel(from);
  if (!model.ok()) return Report(model.status());
  absl::Status s = core::WriteLlmcCheckpoint(**model, out);
  if (s.ok()) std::printf("wrote %s (llm.c version 3, fp32)\n", out.c_str());
  return Report(s);
}

}  // namespace
}  // namespace memtrain::launcher

int main(int argc, char** argv) {
  using namespace memtrain::launcher;
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return Usage("no job file given");
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::printf("%s", kUsage);
    return 0;
  }
  if (args[0] == "sample") return RunSample({args.begin() + 1, args.end()});
  if (args[0] == "export") return RunExport({args.begin() + 1, args.end()});
  return RunJob(args);
}
