#include "launcher/federated.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint.h"
#include "core/file_util.h"
#include "core/model/cnn.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "core/threads.h"
#include "federated/fashion_mnist.h"
#include "federated/fedavg.h"
#include "federated/partition.h"
#include "federated/pruning.h"
#include "launcher/agree.h"
#include "launcher/field_names.h"
#include "launcher/loop.h"
#include "launcher/make_optimizer.h"
#include "launcher/reporter.h"
#include "launcher/spec.h"
#include "launcher/train.h"
#include "nlohmann/json.hpp"
#include "optim/schedule.h"

namespace memtrain::launcher {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr char kFormat[] = "memtrain-federated/1";
std::string FashionDir(const Job& job) {
  const std::string& dir = job.data().fashion_mnist_dir();
  return dir.empty() ? federated::DefaultFashionMnistDir() : dir;
}

// Fashion-MNIST and the client partition: the same on every rank. Dataset errors name the field
// and the file; partition errors name the federated.* field.
absl::Status LoadData(const Job& job, federated::FashionMnist* data,
                      federated::Partition* partition) {
  absl::StatusOr<federated::FashionMnist> loaded = federated::FashionMnist::Load(FashionDir(job));
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrFormat("data.fashion_mnist_dir = \"%s\": %s",
                                        job.data().fashion_mnist_dir(), loaded.status().message()));
  }
  *data = std::move(*loaded);
  const Federated& f = job.federated();
  MT_ASSIGN_OR_RETURN(
      *partition,
      federated::DirichletPartition(data->train.labels, federated::FashionMnist::kNumClasses,
                                    f.num_clients(), f.alpha(), f.seed(), f.min_client_samples()));
  return absl::OkStatus();
}

federated::PruneOptions ToPruneOptions(const Federated& f) {
  const Pruning& p = f.pruning();
  federated::PruneOptions o;
  o.method = p.method() == Pruning::ONE_SHOT  ? federated::PruneMethod::kOneShot
             : p.method() == Pruning::FEDTINY ? federated::PruneMethod::kFedTiny
                                              : federated::PruneMethod::kNone;
  o.density = p.density();
  o.candidates = p.candidates();
  o.bn_batches = p.bn_batches();
  o.adjust_rounds = p.adjust_rounds();
  o.initial_rate = p.initial_rate();
  o.seed = f.seed();
  return o;
}

federated::ImageSet Images(const federated::MnistSplit& s) {
  return {s.images.data(),
          s.labels.data(),
          s.size(),
          federated::FashionMnist::kChannels,
          federated::FashionMnist::kHeight,
          federated::FashionMnist::kWidth};
}

// Where rank 0 saves the partition: checkpoint.dir/partition.json, else next to the metrics
// (runs/x/metrics.jsonl -> runs/x/metrics.partition.json); "" = not saved.
std::string PartitionPath(const Job& job) {
  if (!job.checkpoint().dir().empty()) return job.checkpoint().dir() + "/partition.json";
  if (job.output().metrics().empty()) return "";
  return fs::path(job.output().metrics()).replace_extension(".partition.json").string();
}

// ---- checkpoints ----

std::string StepName(int64_t round) { return absl::StrFormat("step_%08d", round); }

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot read %s", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<core::NamedTensor> ModelTensors(core::Cnn& model) {
  std::vector<core::NamedTensor> out;
  for (int s = 0; s < model.num_stages(); ++s) {
    const core::ParamBlock& b = model.block(s);
    for (const core::ParamView& v : b.views())
      out.push_back({b.name() + "." + v.name, b.param(v.name)});
  }
  return out;
}

// The settings a checkpoint must share with the job that resumes it: they fix the weights' shapes,
// the partition, the clients of every round and the pruner's start.
Json RunIdentity(const Job& job) {
  const Federated& f = job.federated();
  const Pruning& p = f.pruning();
  return {{"model.cnn.layers", ToCnnConfig(job.model().cnn()).layers},
          {"model.init_seed", job.model().init_seed()},
          {"federated.num_clients", f.num_clients()},
          {"federated.alpha", f.alpha()},
          {"federated.seed", f.seed()},
          {"federated.min_client_samples", f.min_client_samples()},
          {"federated.pruning.method", Pruning::Method_Name(p.method())},
          {"federated.pruning.density", p.density()},
          {"federated.pruning.candidates", p.candidates()},
          {"federated.pruning.bn_batches", p.bn_batches()},
          {"federated.pruning.adjust_rounds", p.adjust_rounds()},
          {"federated.pruning.initial_rate", p.initial_rate()}};
}

// Rank 0: checkpoint.dir/step_NNNNNNNN after `round` rounds, atomically (see federated.h).
absl::Status SaveFederated(const Job& job, int64_t round, core::Cnn& model,
                           const federated::Pruner& pruner) {
  const Checkpoint& c = job.checkpoint();
  const std::string& dir = c.dir();
  const std::string name = StepName(round);
  const std::string final_dir = dir + "/" + name;
  const std::vector<core::NamedTensor> tensors = ModelTensors(model);
  // A NaN or infinity never reaches a checkpoint.
  for (const core::NamedTensor& nt : tensors) {
    const float* p = nt.tensor.f32();
    for (int64_t i = 0; i < nt.tensor.numel(); ++i) {
      if (!std::isfinite(p[i])) {
        return absl::AbortedError(absl::StrFormat(
            "not saving %s: weight %s holds a non-finite value (%g at index %d), the training "
            "diverged; the checkpoints already in %s are left as they were",
            final_dir, nt.name, p[i], i, dir));
      }
    }
  }
  MT_ASSIGN_OR_RETURN(std::unique_ptr<checkpoint::CheckpointWriter> writer,
                      checkpoint::CheckpointWriter::Begin(dir, name));
  const std::string& tmp = writer->tmp();
  Json files = Json::object();
  MT_ASSIGN_OR_RETURN(core::FileDigest model_digest,
                      core::WriteSafetensors(tmp + "/model.safetensors", tensors,
                                             {{"format", "memtrain"}, {"model", "cnn"}}));
  files["model.safetensors"] = {{"bytes", model_digest.bytes}, {"crc32", model_digest.crc32}};
  std::vector<core::NamedTensor> masks;
  for (int s = 0; s < model.num_stages(); ++s) {
    const core::ParamBlock& b = model.block(s);
    if (b.has_mask()) masks.push_back({b.name() + ".mask", b.mask()});
  }
  if (!masks.empty()) {
    MT_ASSIGN_OR_RETURN(
        core::FileDigest mask_digest,
        core::WriteSafetensors(tmp + "/masks.safetensors", masks,
                               {{"format", "memtrain"}, {"masks", "u8, 1 = kept"}}));
    files["masks.safetensors"] = {{"bytes", mask_digest.bytes}, {"crc32", mask_digest.crc32}};
  }
  Json densities = Json::object();
  for (const auto& [layer, d] : pruner.Densities()) densities[layer] = d;
  Json manifest = {{"format", kFormat},
                   {"step", round},
                   {"serial", writer->serial()},
                   {"run", RunIdentity(job)},
                   {"pruning",
                    {{"chosen_candidate", pruner.chosen_candidate()},
                     {"density", pruner.density()},
                     {"densities", densities}}},
                   {"files", files},
                   {"job", JobToText(job)}};
  return writer->Publish(manifest.dump(2), c.keep());
}

// A checkpoint read and checked, not yet applied to the model.
struct LoadedFederated {
  std::string folder;
  int64_t round = 0;
  core::SafetensorsFile model;
  std::optional<core::SafetensorsFile> masks;
};

absl::StatusOr<LoadedFederated> ReadFolder(const Job& job, const std::string& folder) {
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrFormat("checkpoint %s: %s", folder, why));
  };
  absl::StatusOr<std::string> text = ReadText(folder + "/state.json");
  if (!text.ok()) return bad("no readable state.json");
  Json m = Json::parse(*text, nullptr, false);
  if (!m.is_object() || !m.contains("format") || !m["format"].is_string()) {
    return bad("state.json is not a checkpoint manifest");
  }
  if (m["format"] != kFormat) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "checkpoint %s is a %s checkpoint, not a federated one (%s); resume a federated job "
        "from the checkpoint.dir it wrote",
        folder, m["format"].get<std::string>(), kFormat));
  }
  if (!m.contains("step") || !m["step"].is_number_integer() || !m.contains("files") ||
      !m["files"].is_object() || !m["files"].contains("model.safetensors") || !m.contains("run") ||
      !m["run"].is_object()) {
    return bad("state.json lacks the round, the run or the files");
  }
  LoadedFederated out;
  out.folder = folder;
  out.round = m["step"].get<int64_t>();
  // The settings that fix the state must be the job's.
  const Json want = RunIdentity(job);
  for (const auto& [field, value] : want.items()) {
    const Json& got = m["run"].contains(field) ? m["run"][field] : Json();
    if (got != value) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s = %s but checkpoint %s was written with %s; resume with the job that wrote it (or "
          "start a new run in another checkpoint.dir)",
          field, value.dump(), folder, got.is_null() ? "none" : got.dump()));
    }
  }
  for (const auto& [file, digest] : m["files"].items()) {
    if (file != "model.safetensors" && file != "masks.safetensors") continue;
    MT_ASSIGN_OR_RETURN(core::SafetensorsFile f, core::SafetensorsFile::Read(folder + "/" + file));
    if (!digest.contains("bytes") || !digest.contains("crc32") ||
        f.digest().bytes != digest["bytes"].get<int64_t>() ||
        f.digest().crc32 != digest["crc32"].get<uint32_t>()) {
      return bad(absl::StrFormat(
          "%s does not match state.json (size %d, CRC-32 %08x; state.json: %s): the file is "
          "damaged",
          file, f.digest().bytes, f.digest().crc32, digest.dump()));
    }
    if (file == "model.safetensors") {
      out.model = std::move(f);
    } else {
      out.masks = std::move(f);
    }
  }
  return out;
}

absl::StatusOr<LoadedFederated> ReadCheckpoint(const Job& job, const TrainOptions& options) {
  std::string folder = options.resume_from;
  const std::string& dir = job.checkpoint().dir();
  if (folder.empty()) {
    if (dir.empty()) {
      return absl::InvalidArgumentError(
          "--resume needs checkpoint.dir: the folder the interrupted run saved into");
    }
    absl::StatusOr<std::string> latest = checkpoint::LatestCheckpoint(dir);
    if (!latest.ok()) return WithOlderCheckpoints(latest.status(), dir, "");
    folder = *latest;
  } else if (!fs::is_regular_file(folder + "/state.json")) {
    return absl::NotFoundError(absl::StrFormat(
        "--resume_from %s: not a checkpoint folder (no state.json); give one of the "
        "step_NNNNNNNN folders of checkpoint.dir",
        folder));
  }
  absl::StatusOr<LoadedFederated> loaded = ReadFolder(job, folder);
  if (!loaded.ok()) {
    return options.resume_from.empty() ? WithOlderCheckpoints(loaded.status(), dir, folder)
                                       : loaded.status();
  }
  if (loaded->round >= job.train().steps()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "train.steps = %d but checkpoint %s is already at round %d; raise train.steps to train "
        "further",
        job.train().steps(), folder, loaded->round));
  }
  return loaded;
}

// Copies the checkpoint's weights (every view) and masks into the model.
absl::Status ApplyCheckpoint(const LoadedFederated& c, core::Cnn& model) {
  for (const core::NamedTensor& nt : ModelTensors(model)) {
    MT_RETURN_IF_ERROR(c.model.CopyTo(nt.name, nt.tensor));
  }
  for (int s = 0; s < model.num_stages(); ++s) {
    core::ParamBlock& b = model.block(s);
    const std::string name = b.name() + ".mask";
    if (!c.masks || c.masks->entries().count(name) == 0) {
      b.ClearMask();
      continue;
    }
    MT_ASSIGN_OR_RETURN(core::Tensor mask, core::Tensor::Empty({b.numel()}, core::DType::kU8,
                                                               core::MemoryTag::kOther));
    MT_RETURN_IF_ERROR(c.masks->CopyTo(name, mask));
    MT_RETURN_IF_ERROR(b.SetMask(std::move(mask)));
  }
  return absl::OkStatus();
}

// Everything a rank builds before the first collective.
struct FedSetup {
  federated::FashionMnist data;
  federated::Partition partition;
  std::unique_ptr<core::Cnn> model;
  std::unique_ptr<optim::Optimizer> opt;
  std::unique_ptr<federated::FedAvg> fed;
  std::unique_ptr<federated::Pruner> pruner;
  std::optional<LoadedFederated> ckpt;
};

absl::Status BuildFedSetup(const Job& job, const TrainOptions& options,
                           parallel::Communicator* world, FedSetup* s) {
  MT_RETURN_IF_ERROR(LoadData(job, &s->data, &s->partition));
  const Federated& f = job.federated();
  absl::StatusOr<std::unique_ptr<core::Cnn>> model =
      core::Cnn::Create(ToCnnConfig(job.model().cnn()));
  if (!model.ok()) return ToJobSpecNames(model.status());
  s->model = std::move(*model);
  s->model->InitWeights(job.model().init_seed());
  MT_RETURN_IF_ERROR(
      s->model->Prepare({.B = f.batch_size(), .T = 1, .mode = core::ModelMode::kTrain}));
  MT_ASSIGN_OR_RETURN(s->opt, MakeOptimizer(job.optimizer(), s->model.get()));
  s->fed = std::make_unique<federated::FedAvg>(
      s->model.get(), s->opt.get(), world, Images(s->data.train), s->partition.client_indices,
      federated::FedAvgOptions{.clients_per_round = f.clients_per_round(),
                               .local_epochs = f.local_epochs(),
                               .batch_size = f.batch_size(),
                               .seed = f.seed()});
  for (core::StageHooks* h : options.hooks) s->fed->engine().AddHooks(h);
  absl::StatusOr<std::unique_ptr<federated::Pruner>> pruner =
      federated::Pruner::Create(s->model.get(), ToPruneOptions(f));
  if (!pruner.ok()) return ToJobSpecNames(pruner.status());
  s->pruner = std::move(*pruner);
  if (options.resume || !options.resume_from.empty()) {
    MT_ASSIGN_OR_RETURN(LoadedFederated c, ReadCheckpoint(job, options));
    s->ckpt = std::move(c);
  }
  return absl::OkStatus();
}

std::string LayersText(const core::CnnConfig& c) {
  std::vector<std::string> parts;
  for (int l : c.layers) parts.push_back(l == core::kPool ? "pool" : absl::StrCat(l));
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

int64_t NumParameters(core::Cnn& model) {
  int64_t n = 0;
  for (int s = 0; s < model.num_stages(); ++s) {
    for (const core::ParamView& v : model.block(s).views()) n += v.trainable ? v.numel : 0;
  }
  return n;
}

std::string DensitiesJson(const federated::Pruner& pruner) {
  std::vector<std::string> parts;
  for (const auto& [layer, d] : pruner.Densities()) {
    parts.push_back(absl::StrFormat("\"%s\": %s", layer, JsonNumber(d)));
  }
  return absl::StrCat("{", absl::StrJoin(parts, ", "), "}");
}

}  // namespace

absl::Status ValidateFederatedData(const Job& job) {
  federated::FashionMnist data;
  federated::Partition partition;
  MT_RETURN_IF_ERROR(LoadData(job, &data, &partition));
  return ToJobSpecNames(core::Cnn::Create(ToCnnConfig(job.model().cnn())).status());
}

absl::Status RunFederated(const Job& job, const TrainOptions& options,
                          parallel::Communicator* world) {
  const int rank = world->rank();
  const Federated& f = job.federated();
  const Train& t = job.train();
  const Checkpoint& c = job.checkpoint();
  const bool resuming = options.resume || !options.resume_from.empty();
  // Local: the data, the partition, the model, the optimizer, FedAvg, the pruner and the
  // checkpoint to resume from; agreed before the first collective of the run.
  FedSetup s;
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, BuildFedSetup(job, options, world, &s)));
  core::Cnn& model = *s.model;
  federated::FedAvg& fed = *s.fed;
  federated::Pruner& pruner = *s.pruner;
  // The pruner's start (before round 0: the masks, FedTiny's adaptive BatchNorm selection over
  // the first round's clients) is a pure function of the initial weights and the seed: a resumed
  // run repeats it, then takes the weights and masks of its checkpoint.
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, pruner.Start(fed)));
  if (s.ckpt) {
    MT_RETURN_IF_ERROR(AgreeOnStatus(world, ApplyCheckpoint(*s.ckpt, model)));
    pruner.SyncFromModel();  // FedTiny's next adjustments start from the checkpoint's masks
  }
  const int64_t first = s.ckpt ? s.ckpt->round : 0;

  // Only now that every rank can run is anything written.
  Reporter report;
  absl::Status opened;
  const std::string partition_path = PartitionPath(job);
  if (rank == 0) {
    opened = report.Open(job.output().metrics(),
                         resuming ? std::optional<int64_t>(first) : std::nullopt, options.quiet);
    if (opened.ok() && !c.dir().empty()) {
      std::error_code ec;
      fs::create_directories(c.dir(), ec);
      const int removed = checkpoint::RemoveStaleTemporaries(c.dir());
      if (removed > 0) {
        report.Line(absl::StrFormat("%s: cleaned up %d temporary folder(s) of interrupted saves",
                                    c.dir(), removed));
      }
    }
    if (opened.ok() && !partition_path.empty()) {
      opened = federated::SavePartition(s.partition, partition_path);
    }
  }
  MT_RETURN_IF_ERROR(AgreeOnStatus(world, opened));
  parallel::SetCollectiveTimeout(job.parallel().collective_timeout_s());

  const int64_t last =
      options.stop_after > 0 ? std::min<int64_t>(options.stop_after, t.steps()) : t.steps();
  const Schedule& sch = job.schedule();
  const optim::LrSchedule lr_at{.peak = PeakLr(job.optimizer()),
                                .warmup_steps = sch.warmup_steps(),
                                .total_steps = t.steps(),
                                .decay = sch.decay() == Schedule::COSINE ? optim::Decay::kCosine
                                         : sch.decay() == Schedule::LINEAR
                                             ? optim::Decay::kLinear
                                             : optim::Decay::kConstant,
                                .min_ratio = sch.min_lr_ratio()};
  const federated::ImageSet test = Images(s.data.test);
  if (rank == 0) {
    const Pruning& p = f.pruning();
    report.Line(absl::StrFormat(
        "federated: CNN %s, %d parameters; %d clients (Dirichlet alpha %g, seed %d, %d draw(s)), "
        "%d per round x %d local epoch(s) of batch %d on %d rank(s) x %d threads; %s lr %g; "
        "pruning %s%s%s%s",
        LayersText(model.config()), NumParameters(model), f.num_clients(), f.alpha(), f.seed(),
        s.partition.draws, f.clients_per_round(), f.local_epochs(), f.batch_size(), world->size(),
        core::GetThreads(), s.opt->name(), PeakLr(job.optimizer()),
        Pruning::Method_Name(p.method()),
        p.method() == Pruning::NONE ? "" : absl::StrFormat(" density %g", p.density()),
        partition_path.empty() ? "" : absl::StrCat("; partition saved to ", partition_path),
        resuming ? absl::StrFormat("; resuming at round %d", first) : ""));
    report.Json(absl::StrFormat(
        R"({"event": "start", "step": %d, "params": %d, "world": %d, "clients": %d, )"
        R"("partition_draws": %d})",
        first, NumParameters(model), world->size(), f.num_clients(), s.partition.draws));
    if (!resuming && f.pruning().method() == Pruning::FEDTINY) {
      std::vector<std::string> losses;
      for (double l : pruner.candidate_losses()) losses.push_back(JsonNumber(l));
      report.Json(absl::StrFormat(
          R"({"event": "pruning", "step": 0, "chosen_candidate": %d, "candidate_losses": [%s], )"
          R"("density": %s, "densities": %s})",
          pruner.chosen_candidate(), absl::StrJoin(losses, ", "), JsonNumber(pruner.density()),
          DensitiesJson(pruner)));
      report.Line(absl::StrFormat(
          "pruning: adaptive BN selection chose candidate %d of %d (mean losses %s); density %.4f",
          pruner.chosen_candidate(), f.pruning().candidates(), absl::StrJoin(losses, ", "),
          pruner.density()));
    }
  }

  // Rank 0 evaluates (the model is the same on every rank); an error of it is agreed with the
  // next round's status.
  absl::Status pending;
  auto evaluate = [&]() -> std::optional<federated::FedAvg::Eval> {
    if (rank != 0 || !pending.ok()) return std::nullopt;
    absl::StatusOr<federated::FedAvg::Eval> ev = fed.Evaluate(test);
    if (!ev.ok()) {
      pending = ev.status();
      return std::nullopt;
    }
    return *ev;
  };
  if (t.eval_at_start() && first < last && rank == 0) {
    if (std::optional<federated::FedAvg::Eval> ev = evaluate()) {
      report.Json(absl::StrFormat(R"({"step": %d, "test_accuracy": %s, "test_loss": %s})", first,
                                  JsonNumber(ev->accuracy), JsonNumber(ev->loss)));
      report.Line(
          absl::StrFormat("round %d/%d | test acc %.4f | test loss %.4f (before the first "
                          "round)",
                          first, t.steps(), ev->accuracy, ev->loss));
    }
  }

  const auto t_start = Clock::now();
  double last_accuracy = -1;
  for (int64_t r = first; r < last; ++r) {
    const auto t0 = Clock::now();
    const float lr = lr_at.At(r);
    absl::Status local = s.opt->set_lr(lr);
    if (local.ok()) local = pruner.BeforeRound(fed, r);
    absl::StatusOr<federated::RoundStats> stats =
        local.ok() ? fed.Round(r) : absl::StatusOr<federated::RoundStats>(local);
    local = stats.ok() ? pruner.AfterRound(fed, r) : stats.status();
    // A failed metrics write or evaluation on rank 0 stops every rank here too, and a stop signal
    // on any rank makes every rank stop after this round.
    int stop = PendingStopSignal();
    if (local.ok() && rank == 0) local = !pending.ok() ? pending : report.status();
    MT_RETURN_IF_ERROR(AgreeOnStatus(world, local, &stop));
    const federated::RoundStats& st = *stats;
    const int64_t done = r + 1;
    const bool final_round = done == last;
    const bool stopping = stop != 0 && !final_round;
    if (!std::isfinite(st.train_loss)) {  // the same on every rank
      std::string kept = "no checkpoint holds this round";
      if (rank == 0) {
        if (!c.dir().empty()) {
          absl::StatusOr<std::string> latest = checkpoint::LatestCheckpoint(c.dir());
          absl::StrAppend(
              &kept, latest.ok() ? absl::StrFormat("; the last checkpoint, %s, is intact", *latest)
                                 : std::string("; no checkpoint was saved yet"));
        }
        report.Json(absl::StrFormat(R"({"step": %d, "train_loss": null, "skipped": true})", done));
        (void)report.Close();
      }
      return absl::AbortedError(
          rank != 0 ? ""
                    : absl::StrFormat(
                          "round %d: the clients' training loss is %g; stopping: %s. "
                          "Lower the learning rate (or add schedule.warmup_steps), then resume "
                          "from the last checkpoint with --resume or start again",
                          done, st.train_loss, kept));
    }
    const double round_s = std::chrono::duration<double>(Clock::now() - t0).count();
    // Not at a --stop_after or signal stop: the metrics of a resumed run are those of an
    // uninterrupted one.
    const bool eval_due = (f.eval_every() > 0 && done % f.eval_every() == 0) || done == t.steps();
    std::optional<federated::FedAvg::Eval> ev;
    if (eval_due) ev = evaluate();
    if (rank == 0) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
      const double eta = elapsed / (done - first) * (last - done);
      const int k = std::max<int>(1, static_cast<int>(st.clients.size()));
      std::string test_fields;
      if (ev) {
        last_accuracy = ev->accuracy;
        test_fields = absl::StrFormat(R"("test_accuracy": %s, "test_loss": %s, )",
                                      JsonNumber(ev->accuracy), JsonNumber(ev->loss));
      }
      report.Json(absl::StrFormat(
          R"({"step": %d, "train_loss": %s, %s"lr": %s, "density": %s, "densities": %s, )"
          R"("clients": %d, "samples": %d, "train_flops": %s, "train_flops_sparse": %s, )"
          R"("bytes_up": %d, "bytes_down": %d, )"
          R"("prune_bytes_up": %d, "peak_client_mib": %.2f, "round_ms": %.3f})",
          done, JsonNumber(st.train_loss), test_fields, JsonNumber(lr),
          JsonNumber(pruner.density()), DensitiesJson(pruner), k, st.samples,
          JsonNumber(static_cast<double>(st.train_flops) / k, "%.0f"),
          JsonNumber(static_cast<double>(st.train_flops_sparse) / k, "%.0f"), st.bytes_up,
          st.bytes_down, pruner.round_bytes_up(), st.peak_client_bytes / 1048576.0, 1e3 * round_s));
      report.Progress(
          absl::StrFormat("round %d/%d | loss %.4f%s | density %.3f | %.0f ms/round | ETA %s", done,
                          t.steps(), st.train_loss,
                          ev ? absl::StrFormat(" | test acc %.4f", ev->accuracy) : "",
                          pruner.density(), 1e3 * round_s, Hms(eta)),
          ev.has_value() || final_round);
    }
    if (!c.dir().empty() && ((c.every() > 0 && done % c.every() == 0) || final_round || stopping)) {
      // Rank 0 saves; an evaluation or metrics error stops the run before the save.
      absl::Status saved = rank != 0               ? absl::OkStatus()
                           : !pending.ok()         ? pending
                           : !report.status().ok() ? report.status()
                                                   : SaveFederated(job, done, model, pruner);
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, saved));
      if (rank == 0) {
        report.Line(absl::StrFormat("round %d/%d | checkpoint %s/%s", done, t.steps(), c.dir(),
                                    StepName(done)));
      }
    }
    if (stopping) {
      const std::string name = stop == SIGINT ? "SIGINT" : stop == SIGTERM ? "SIGTERM" : "signal";
      if (rank == 0) {
        report.Json(
            absl::StrFormat(R"({"event": "stopped", "step": %d, "signal": "%s"})", done, name));
      }
      absl::Status closed = rank == 0 ? report.Close() : absl::OkStatus();
      if (closed.ok()) closed = pending;
      MT_RETURN_IF_ERROR(AgreeOnStatus(world, closed));
      absl::Status stopped = absl::CancelledError(
          rank != 0 ? ""
                    : absl::StrFormat(
                          "stopped by %s after round %d of %d; %s", name, done, t.steps(),
                          c.dir().empty() ? "no checkpoint.dir, so nothing was saved"
                                          : absl::StrFormat("continue with --resume (from %s/%s)",
                                                            c.dir(), StepName(done))));
      return WithStopSignal(std::move(stopped), stop);
    }
  }
  absl::Status closed;
  if (rank == 0) {
    report.Json(absl::StrFormat(R"({"event": "end", "step": %d})", last));
    closed = report.Close();
    if (closed.ok()) closed = pending;
    if (closed.ok()) {
      report.Line(absl::StrFormat(
          "done: %d round(s)%s", last - first,
          last_accuracy >= 0 ? absl::StrFormat(", test accuracy %.4f", last_accuracy) : ""));
    }
  }
  return AgreeOnStatus(world, closed);
}

}  // namespace memtrain::launcher
