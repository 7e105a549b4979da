#include "launcher/spec.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint.h"
#include "core/allocator.h"
#include "core/llmc.h"
#include "core/status.h"
#include "federated/fashion_mnist.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "launcher/field_names.h"
#include "launcher/make_optimizer.h"
#include "parallel/ulysses.h"

namespace memtrain::launcher {
namespace {

namespace pb = google::protobuf;

class Collector : public pb::io::ErrorCollector {
 public:
  explicit Collector(std::string name) : name_(std::move(name)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (first_.empty()) {
      first_ = absl::StrFormat("%s:%d:%d: %s", name_, line + 1, column + 1, message);
    }
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string name_;
  std::string first_;
};

// Recursively sets unset singular fields of `msg` to their defaults; sub-messages are completed
// only where present (a oneof keeps its chosen member).
void FillMessage(pb::Message* msg) {
  const pb::Descriptor* d = msg->GetDescriptor();
  const pb::Reflection* r = msg->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (f->containing_oneof() != nullptr && !r->HasField(*msg, f)) continue;
      FillMessage(r->MutableMessage(msg, f));
      continue;
    }
    if (f->containing_oneof() != nullptr || r->HasField(*msg, f)) continue;
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(msg, f, f->default_value_int32());
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(msg, f, f->default_value_int64());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(msg, f, f->default_value_uint32());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(msg, f, f->default_value_uint64());
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(msg, f, f->default_value_float());
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(msg, f, f->default_value_double());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(msg, f, f->default_value_bool());
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(msg, f, f->default_value_enum());
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        r->SetString(msg, f, f->default_value_string());
        break;
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
}

absl::Status Bad(const std::string& field, const std::string& value, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrFormat("%s = %s: %s", field, value, why));
}

absl::Status AtLeast(const char* field, int64_t v, int64_t lo) {
  if (v >= lo) return absl::OkStatus();
  return Bad(field, absl::StrCat(v), absl::StrFormat("must be >= %d", lo));
}

bool FileExists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// The offload section (offload/streamer.h's StreamerOptions::Create rules, with job-spec names, so
// a bad value is refused before anything is allocated). Only with a tier; without one, only a
// device budget is refused (it applies to the offload window).
absl::Status ValidateOffload(const Job& job) {
  const Offload& o = job.offload();
  if (o.tier() == Offload::NONE) {
    if (o.device_budget_mib() != 0) {
      return Bad("offload.device_budget_mib", absl::StrCat(o.device_budget_mib()),
                 "applies only with an offload tier; set offload.tier to HOST or SSD, or leave "
                 "it 0");
    }
    return absl::OkStatus();
  }
  const std::string tier = Offload::Tier_Name(o.tier());
  if (job.train().device() == "cuda") {
    return Bad("offload.tier", tier,
               "offload on CUDA is not built yet; use train.device \"cpu\" (or offload.tier "
               "NONE)");
  }
  if (job.parallel().sequence() > 1) {
    return Bad("offload.tier", tier,
               absl::StrFormat("offload does not run with sequence parallelism yet "
                               "(parallel.sequence = %d); set parallel.sequence to 1 or "
                               "offload.tier to NONE",
                               job.parallel().sequence()));
  }
  if (o.tier() == Offload::SSD && o.ssd_path().empty()) {
    return Bad("offload.ssd_path", "\"\"",
               "the SSD tier needs a directory for each rank's file; give an existing directory "
               "on a fast local drive");
  }
  const bool zo = job.optimizer().has_zo();
  const int k = o.resident_blocks();
  if (k < (zo ? 1 : 2)) {
    return Bad("offload.resident_blocks", absl::StrCat(k),
               zo ? "must be >= 1"
                  : "must be >= 2 when training with gradients (a layer's gradient stays in its "
                    "slot until its reduction, while the next layer's backward runs); raise it");
  }
  if (o.swap_batch() < 1 || o.swap_batch() > k) {
    return Bad("offload.swap_batch", absl::StrCat(o.swap_batch()),
               absl::StrFormat("must be in [1, offload.resident_blocks = %d]; lower it or raise "
                               "resident_blocks",
                               k));
  }
  if (o.prefetch_depth() < 0 || o.prefetch_depth() > k - 1) {
    return Bad("offload.prefetch_depth", absl::StrCat(o.prefetch_depth()),
               absl::StrFormat("must be in [0, offload.resident_blocks - 1 = %d] (a prefetched "
                               "layer needs a slot of its own); lower it or raise resident_blocks",
                               k - 1));
  }
  if (o.queue_depth() < 1 || o.queue_depth() > 4096) {
    return Bad("offload.queue_depth", absl::StrCat(o.queue_depth()),
               "must be in [1, 4096] (requests in flight per transfer)");
  }
  MT_RETURN_IF_ERROR(AtLeast("offload.device_budget_mib", o.device_budget_mib(), 0));
  if (o.piece_mib() < 1 || o.piece_mib() > 1024) {
    return Bad("offload.piece_mib", absl::StrCat(o.piece_mib()),
               "must be in [1, 1024] (MiB per stored piece; the default 16 suits most drives)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Job> ParseJobText(const std::string& text, const std::string& name) {
  Job job;
  pb::TextFormat::Parser parser;
  Collector errors(name);
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &job)) {
    return absl::InvalidArgumentError(errors.first().empty()
                                          ? absl::StrCat(name, ": cannot parse the job spec")
                                          : errors.first());
  }
  return job;
}

absl::StatusOr<Job> ParseJobFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrFormat("cannot read job spec %s: %s; check the path", path, std::strerror(errno)));
  }
  // A folder reads as an empty spec on some systems: refuse anything but a file (a pipe, as from
  // <(...), is fine).
  if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("job spec %s is %s, not a file; give the path of a .pbtxt file", path,
                        S_ISDIR(st.st_mode) ? "a directory" : "not a regular file"));
  }
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrFormat("cannot read job spec %s; check the path", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    return absl::NotFoundError(absl::StrFormat("cannot read job spec %s: read error", path));
  }
  return ParseJobText(ss.str(), path);
}

absl::Status ApplyOverride(Job* job, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--set %s: expected field.path=value, e.g. --set train.steps=10", assignment));
  }
  const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  pb::Message* msg = job;
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts[i]);
    const bool last = i + 1 == parts.size();
    if (f == nullptr ||
        (f->is_repeated() && !(last && f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE))) {
      std::string known;
      for (int k = 0; k < msg->GetDescriptor()->field_count(); ++k) {
        absl::StrAppend(&known, k ? ", " : "", msg->GetDescriptor()->field(k)->name());
      }
      return absl::InvalidArgumentError(
          absl::StrFormat("--set %s: %s has no field \"%s\" (fields: %s)", assignment,
                          i == 0 ? "the job" : absl::StrJoin(parts.begin(), parts.begin() + i, "."),
                          parts[i], known));
    }
    const pb::Reflection* r = msg->GetReflection();
    if (i + 1 < parts.size()) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--set %s: %s is a value, not a section", assignment, parts[i]));
      }
      msg = r->MutableMessage(msg, f);
      continue;
    }
    if (f->is_repeated() && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      r->AddString(msg, f, value);  // a repeated string: --set appends one entry
      return absl::OkStatus();
    }
    if (f->is_repeated()) {  // a repeated number: --set replaces the list ("[8,-1,16]" or "8")
      const std::unique_ptr<pb::Message> parsed(msg->New());
      pb::TextFormat::Parser parser;
      Collector errors("--set " + assignment);
      parser.RecordErrorsTo(&errors);
      const bool ok = parser.ParseFromString(absl::StrCat(f->name(), ": ", value), parsed.get());
      if (!ok) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "--set %s: \"%s\" is not a valid list of %s for %s; write e.g. %s=[8,-1,16,-1]",
            assignment, value, f->type_name(), path, path));
      }
      r->SwapFields(msg, parsed.get(), {f});  // the parsed list replaces the old one
      return absl::OkStatus();
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING &&
        (value.empty() || value.front() != '"')) {
      r->SetString(msg, f, value);  // unquoted strings are taken as they are
      return absl::OkStatus();
    }
    // The error goes to a collector, not to protobuf's log (which would print a raw line first).
    pb::TextFormat::Parser parser;
    Collector errors("--set " + assignment);
    parser.RecordErrorsTo(&errors);
    if (!parser.ParseFieldValueFromString(value, f, msg)) {
      return absl::InvalidArgumentError(absl::StrFormat("--set %s: \"%s\" is not a valid %s for %s",
                                                        assignment, value, f->type_name(), path));
    }
  }
  return absl::OkStatus();
}

void FillDefaults(Job* job) {
  // `federated` is a switch: present or not (FillMessage would create every section).
  const bool federated = job->has_federated();
  job->mutable_model();
  job->mutable_data();
  job->mutable_train();
  if (job->optimizer().kind_case() == Optimizer::KIND_NOT_SET) {
    job->mutable_optimizer()->mutable_adamw();
  }
  job->mutable_schedule();
  job->mutable_parallel();
  job->mutable_checkpoint();
  job->mutable_output();
  if (job->model().source_case() == Model::SOURCE_NOT_SET) {
    if (federated) {
      job->mutable_model()->mutable_cnn();
    } else {
      job->mutable_model()->mutable_gpt();
    }
  }
  FillMessage(job);
  if (!federated) job->clear_federated();
  if (job->model().has_cnn() && job->model().cnn().layers_size() == 0) {
    for (int c : core::CnnConfig().layers) job->mutable_model()->mutable_cnn()->add_layers(c);
  }
}

core::CnnConfig ToCnnConfig(const Cnn& cnn) {
  core::CnnConfig c;
  c.in_channels = cnn.in_channels();
  c.height = cnn.height();
  c.width = cnn.width();
  c.num_classes = cnn.num_classes();
  if (cnn.layers_size() > 0) c.layers.assign(cnn.layers().begin(), cnn.layers().end());
  return c;
}

namespace {

// A federated job (job.federated): model.cnn on Fashion-MNIST, FedAvg's and the pruning's fields,
// and what does not run with it.
absl::Status ValidateFederated(const Job& job) {
  const Model& m = job.model();
  if (m.has_gpt()) {
    return absl::InvalidArgumentError(
        "model.gpt: a federated job trains an image classifier, not a GPT-2; replace model.gpt "
        "by model.cnn (e.g. model { cnn { layers: [32, -1, 64, -1] } })");
  }
  if (!m.init_from().empty()) {
    return Bad("model.init_from", absl::StrCat("\"", m.init_from(), "\""),
               "a federated job starts from model.cnn initialised from model.init_seed (resume "
               "one with --resume); replace it by model.cnn");
  }
  const Cnn& cnn = m.cnn();
  MT_RETURN_IF_ERROR(ToJobSpecNames(ToCnnConfig(cnn).Validate()));
  auto dataset = [](const char* field, int v, int want, const char* what) -> absl::Status {
    if (v == want) return absl::OkStatus();
    return Bad(field, absl::StrCat(v), absl::StrFormat("%s; set it to %d", what, want));
  };
  MT_RETURN_IF_ERROR(dataset("model.cnn.in_channels", cnn.in_channels(), 1,
                             "Fashion-MNIST images have 1 channel"));
  MT_RETURN_IF_ERROR(
      dataset("model.cnn.height", cnn.height(), 28, "Fashion-MNIST images are 28 pixels high"));
  MT_RETURN_IF_ERROR(
      dataset("model.cnn.width", cnn.width(), 28, "Fashion-MNIST images are 28 pixels wide"));
  MT_RETURN_IF_ERROR(
      dataset("model.cnn.num_classes", cnn.num_classes(), 10, "Fashion-MNIST has 10 classes"));
  auto no_tokens = [](const char* field, const std::string& path) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    return Bad(field, absl::StrCat("\"", path, "\""),
               "a federated job reads Fashion-MNIST from data.fashion_mnist_dir, not token files; "
               "remove it");
  };
  MT_RETURN_IF_ERROR(no_tokens("data.train_tokens", job.data().train_tokens()));
  MT_RETURN_IF_ERROR(no_tokens("data.val_tokens", job.data().val_tokens()));
  const Optimizer& o = job.optimizer();
  if (o.has_zo()) {
    return absl::InvalidArgumentError(
        "optimizer.zo: zeroth-order steps do not run in federated jobs (the clients train with "
        "gradients); use optimizer.sgd, optimizer.adamw or optimizer.lion");
  }
  if (o.clip_grad_norm() != 0) {
    return Bad("optimizer.clip_grad_norm", absl::StrCat(o.clip_grad_norm()),
               "is not applied to the local steps of federated clients; leave it 0");
  }
  const Train& t = job.train();
  if (t.device() != "cpu") {
    return Bad("train.device", absl::StrCat("\"", t.device(), "\""),
               "federated jobs run on the CPU only so far (the CNN has CPU kernels only); set "
               "train.device = \"cpu\"");
  }
  if (t.grad_accum() != 1) {
    return Bad("train.grad_accum", absl::StrCat(t.grad_accum()),
               "has no meaning in a federated job (a local step is one batch of "
               "federated.batch_size images); leave it 1");
  }
  if (t.recompute()) {
    return Bad("train.recompute", "true",
               "the CNN keeps its activations (they are small); leave it false");
  }
  if (t.on_nonfinite() == Train::SKIP) {
    return Bad("train.on_nonfinite", "SKIP",
               "a federated round cannot be skipped (its clients' weights are averaged already); "
               "a round whose loss is not finite stops the run: use STOP");
  }
  if (job.offload().tier() != Offload::NONE) {
    return Bad("offload.tier", Offload::Tier_Name(job.offload().tier()),
               "federated jobs do not offload (the CNN is small); set offload.tier to NONE");
  }
  const Parallel& p = job.parallel();
  if (p.sequence() != 1) {
    return Bad("parallel.sequence", absl::StrCat(p.sequence()),
               "federated jobs deal their clients over data ranks only; set it to 1 and "
               "parallel.data to the number of ranks");
  }
  if (p.perturbation() != 1) {
    return Bad("parallel.perturbation", absl::StrCat(p.perturbation()),
               "federated jobs deal their clients over data ranks only; set it to 1 and "
               "parallel.data to the number of ranks");
  }
  const Federated& f = job.federated();
  MT_RETURN_IF_ERROR(AtLeast("federated.num_clients", f.num_clients(), 1));
  MT_RETURN_IF_ERROR(AtLeast("federated.clients_per_round", f.clients_per_round(), 1));
  if (f.clients_per_round() > f.num_clients()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "federated.clients_per_round = %d exceeds federated.num_clients = %d; lower it or raise "
        "num_clients",
        f.clients_per_round(), f.num_clients()));
  }
  MT_RETURN_IF_ERROR(AtLeast("federated.local_epochs", f.local_epochs(), 1));
  MT_RETURN_IF_ERROR(AtLeast("federated.batch_size", f.batch_size(), 1));
  if (!(f.alpha() > 0 && std::isfinite(f.alpha()))) {
    return Bad("federated.alpha", absl::StrCat(f.alpha()),
               "must be > 0 and finite (the Dirichlet concentration: 0.5 gives non-IID clients, "
               "100 nearly IID ones)");
  }
  MT_RETURN_IF_ERROR(AtLeast("federated.min_client_samples", f.min_client_samples(), 0));
  MT_RETURN_IF_ERROR(AtLeast("federated.eval_every", f.eval_every(), 0));
  const Pruning& pr = f.pruning();
  if (!(pr.density() > 0 && pr.density() <= 1)) {
    return Bad("federated.pruning.density", absl::StrCat(pr.density()),
               "must be in (0, 1] (the fraction of the prunable weights kept; 1 = dense)");
  }
  if (pr.method() == Pruning::NONE && pr.density() < 1) {
    return Bad("federated.pruning.density", absl::StrCat(pr.density()),
               "prunes only with a method: set federated.pruning.method to ONE_SHOT or FEDTINY, "
               "or leave the density 1");
  }
  MT_RETURN_IF_ERROR(AtLeast("federated.pruning.candidates", pr.candidates(), 1));
  MT_RETURN_IF_ERROR(AtLeast("federated.pruning.bn_batches", pr.bn_batches(), 1));
  MT_RETURN_IF_ERROR(AtLeast("federated.pruning.adjust_rounds", pr.adjust_rounds(), 0));
  if (!(pr.initial_rate() >= 0 && pr.initial_rate() <= 1)) {
    return Bad("federated.pruning.initial_rate", absl::StrCat(pr.initial_rate()),
               "must be in [0, 1] (the fraction of a layer's nonzeros revised in the first "
               "adjustment)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateJob(const Job& job, int world_size) {
  if (job.has_federated()) {
    MT_RETURN_IF_ERROR(ValidateFederated(job));
  } else if (job.model().has_cnn()) {
    return absl::InvalidArgumentError(
        "model.cnn: the image classifier trains only in federated jobs; add a federated section "
        "(federated { num_clients: 100 clients_per_round: 10 }) or use model.gpt");
  } else if (job.model().has_gpt()) {
    core::GPT2Config c = ToGPT2Config(job.model().gpt());
    MT_RETURN_IF_ERROR(ToJobSpecNames(c.Validate()));
    if (job.train().seq_len() > c.max_seq_len) {
      return Bad("train.seq_len", absl::StrCat(job.train().seq_len()),
                 absl::StrFormat("exceeds model.gpt.max_seq_len = %d; lower it or raise "
                                 "max_seq_len",
                                 c.max_seq_len));
    }
  } else if (job.model().init_from().empty()) {
    return Bad("model.init_from", "\"\"", "give a checkpoint path or a model.gpt section");
  }
  if (!job.has_federated() && job.data().train_tokens().empty()) {
    return Bad("data.train_tokens", "\"\"",
               "required: an llm.c token file (make one with make_tokens)");
  }
  const Train& t = job.train();
  MT_RETURN_IF_ERROR(AtLeast("train.steps", t.steps(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.batch_size", t.batch_size(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.seq_len", t.seq_len(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.grad_accum", t.grad_accum(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.eval_every", t.eval_every(), 0));
  MT_RETURN_IF_ERROR(AtLeast("train.eval_batches", t.eval_batches(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.log_every", t.log_every(), 1));
  MT_RETURN_IF_ERROR(AtLeast("train.max_consecutive_skips", t.max_consecutive_skips(), 0));
  if (t.device() != "cpu" && t.device() != "cuda") {
    return Bad("train.device", absl::StrCat("\"", t.device(), "\""), "must be \"cpu\" or \"cuda\"");
  }
  if (t.precision() == Train::BF16 && t.device() != "cuda") {
    return Bad("train.precision", "BF16",
               "bf16 compute runs on the GPU: set train.device = \"cuda\" (the CPU computes in "
               "fp32)");
  }
  // The optimizer's own validation (optim::*Config::Validate), with job-spec field names.
  MT_RETURN_IF_ERROR(ValidateOptimizerSpec(job.optimizer()));
  if (job.optimizer().has_zo()) {
    if (t.grad_accum() != 1) {
      return Bad("train.grad_accum", absl::StrCat(t.grad_accum()),
                 "must be 1 with optimizer.zo (raise optimizer.zo.samples or train.batch_size "
                 "instead)");
    }
    if (job.optimizer().clip_grad_norm() != 0) {
      return Bad("optimizer.clip_grad_norm", absl::StrCat(job.optimizer().clip_grad_norm()),
                 "has no meaning with optimizer.zo (there are no gradients); leave it 0");
    }
  }
  if (!(job.optimizer().clip_grad_norm() >= 0)) {
    return Bad("optimizer.clip_grad_norm", absl::StrCat(job.optimizer().clip_grad_norm()),
               "must be >= 0 (0 = no clipping)");
  }
  const Schedule& s = job.schedule();
  MT_RETURN_IF_ERROR(AtLeast("schedule.warmup_steps", s.warmup_steps(), 0));
  if (!(s.min_lr_ratio() >= 0 && s.min_lr_ratio() <= 1)) {
    return Bad("schedule.min_lr_ratio", absl::StrCat(s.min_lr_ratio()), "must be in [0, 1]");
  }
  const Parallel& p = job.parallel();
  MT_RETURN_IF_ERROR(AtLeast("parallel.data", p.data(), 1));
  MT_RETURN_IF_ERROR(AtLeast("parallel.sequence", p.sequence(), 1));
  MT_RETURN_IF_ERROR(AtLeast("parallel.perturbation", p.perturbation(), 1));
  if (!(p.collective_timeout_s() >= 0 && std::isfinite(p.collective_timeout_s()))) {
    return Bad("parallel.collective_timeout_s", absl::StrCat(p.collective_timeout_s()),
               "must be >= 0 seconds (0 turns the watchdog off)");
  }
  if (p.sequence() > 1) {
    if (job.optimizer().has_zo()) {
      return Bad("parallel.sequence", absl::StrCat(p.sequence()),
                 "zeroth-order steps (optimizer.zo) do not run sequence-parallel yet; set it to 1 "
                 "(parallel.perturbation and parallel.data work with optimizer.zo)");
    }
    if (job.train().device() != "cpu") {
      return Bad("parallel.sequence", absl::StrCat(p.sequence()),
                 "sequence parallelism runs on the CPU only so far; set it to 1 or "
                 "train.device to \"cpu\"");
    }
    // Every rank needs a token; with a model spec, a head too (init_from: checked at setup).
    MT_RETURN_IF_ERROR(parallel::UlyssesAttention::Check(
        job.train().seq_len(), job.model().has_gpt() ? job.model().gpt().n_head() : p.sequence(),
        job.model().has_gpt() ? job.model().gpt().n_embd() : p.sequence(), p.sequence()));
  }
  if (p.perturbation() != 1 && !job.optimizer().has_zo()) {
    return Bad("parallel.perturbation", absl::StrCat(p.perturbation()),
               "perturbation parallelism splits the forward passes of a zeroth-order step: it "
               "needs optimizer.zo; set it to 1");
  }
  if (job.optimizer().has_zo() && p.perturbation() > 2 * job.optimizer().zo().samples()) {
    return Bad("parallel.perturbation", absl::StrCat(p.perturbation()),
               absl::StrFormat("must be at most 2 * optimizer.zo.samples = %d (the forward "
                               "passes of a step); raise samples or lower perturbation",
                               2 * job.optimizer().zo().samples()));
  }
  const int64_t product = int64_t{p.data()} * p.sequence() * p.perturbation();
  if (product != world_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "parallel.data * parallel.sequence * parallel.perturbation = %d * %d * %d = %d but the "
        "job was started with %d ranks; use mpirun -np %d or set parallel.data = %d",
        p.data(), p.sequence(), p.perturbation(), product, world_size, product,
        world_size / (p.sequence() * p.perturbation())));
  }
  const Checkpoint& c = job.checkpoint();
  MT_RETURN_IF_ERROR(AtLeast("checkpoint.every", c.every(), 0));
  MT_RETURN_IF_ERROR(AtLeast("checkpoint.keep", c.keep(), 1));
  MT_RETURN_IF_ERROR(ValidateOffload(job));
  return absl::OkStatus();
}

absl::Status ValidateFiles(const Job& job) {
  auto need = [](const char* field, const std::string& path) -> absl::Status {
    if (path.empty() || FileExists(path)) return absl::OkStatus();
    return absl::NotFoundError(absl::StrFormat(
        "%s = \"%s\": no such file; check the path (relative to the current directory)", field,
        path));
  };
  MT_RETURN_IF_ERROR(need("data.train_tokens", job.data().train_tokens()));
  MT_RETURN_IF_ERROR(need("data.val_tokens", job.data().val_tokens()));
  MT_RETURN_IF_ERROR(need("model.init_from", job.model().init_from()));
  // Fashion-MNIST's folder (its files are read, and named when missing or damaged, at the start of
  // the run, on every rank, before anything is written).
  if (job.has_federated()) {
    const std::string& dir = job.data().fashion_mnist_dir();
    const std::string used = dir.empty() ? federated::DefaultFashionMnistDir() : dir;
    std::error_code ec;
    if (!std::filesystem::is_directory(used, ec)) {
      return absl::NotFoundError(absl::StrFormat(
          "data.fashion_mnist_dir = \"%s\"%s: no such folder; %s", dir,
          dir.empty() ? absl::StrCat(" (the default, ", used, ")") : "",
          dir.empty() ? "install Debian's dataset-fashion-mnist (apt install "
                        "dataset-fashion-mnist) or give the folder of the four IDX files"
                      : "give the folder of Fashion-MNIST's four IDX files (relative to the "
                        "current directory)"));
    }
  }
  // The SSD tier's directory: each rank creates its file there at start (on its own node, so
  // every rank checks).
  const std::string& ssd = job.offload().ssd_path();
  if (job.offload().tier() == Offload::SSD && !ssd.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(ssd, ec)) {
      return absl::NotFoundError(absl::StrFormat(
          "offload.ssd_path = \"%s\": no such directory; create it (on a fast local drive) or "
          "check the path (relative to the current directory)",
          ssd));
    }
    if (!std::filesystem::is_directory(ssd, ec)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "offload.ssd_path = \"%s\": is a file, not a directory; give the directory the "
          "offload file goes in",
          ssd));
    }
    if (access(ssd.c_str(), W_OK | X_OK) != 0) {
      return absl::PermissionDeniedError(
          absl::StrFormat("offload.ssd_path = \"%s\": cannot create a file in it: %s; fix its "
                          "permissions or give another directory",
                          ssd, std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

namespace {

// Checks that `path` (a file, or with `is_dir` a folder) can be created or written, without
// leaving anything behind: missing parent folders are created for the probe and removed again.
absl::Status ProbeWritable(const char* field, const std::string& path, bool is_dir) {
  namespace fs = std::filesystem;
  auto bad = [&](const std::string& why) {
    return absl::PermissionDeniedError(
        absl::StrFormat("%s = \"%s\": %s; fix it before training", field, path, why));
  };
  std::error_code ec;
  const fs::path target = fs::absolute(path, ec);
  if (ec) return bad(ec.message());
  // The folder that must hold the probe, and the folders above it that do not exist yet.
  const fs::path folder = is_dir ? target : target.parent_path();
  std::vector<fs::path> missing;
  fs::path existing = folder;
  while (!fs::exists(existing, ec)) {
    missing.push_back(existing);
    if (!existing.has_parent_path() || existing.parent_path() == existing) break;
    existing = existing.parent_path();
  }
  if (!fs::is_directory(existing, ec)) {
    return bad(absl::StrFormat("%s is a file, not a folder", existing.string()));
  }
  if (!is_dir && fs::exists(target, ec)) {
    if (fs::is_directory(target, ec)) return bad("it is a directory, not a file");
    // Existing: must be writable, and is not truncated here (an exit 2 writes nothing).
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (f == nullptr) return bad(absl::StrCat("cannot write it: ", std::strerror(errno)));
    std::fclose(f);
    return absl::OkStatus();
  }
  auto remove_created = [&]() {
    for (const fs::path& p : missing) fs::remove(p, ec);  // deepest first
  };
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (!fs::create_directory(*it, ec) && ec) {
      const std::string why = ec.message();
      remove_created();
      return bad(absl::StrFormat("cannot create %s: %s", it->string(), why));
    }
  }
  const fs::path probe = is_dir ? folder / absl::StrFormat(".probe.tmp.%d", getpid()) : target;
  std::FILE* f = std::fopen(probe.c_str(), "w");
  const int err = errno;
  const bool closed = f != nullptr && std::fclose(f) == 0;
  fs::remove(probe, ec);
  remove_created();
  if (f == nullptr || !closed) {
    return bad(
        absl::StrFormat("cannot create a file in %s: %s", folder.string(), std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateOutputs(const Job& job) {
  if (!job.checkpoint().dir().empty()) {
    MT_RETURN_IF_ERROR(ProbeWritable("checkpoint.dir", job.checkpoint().dir(), /*is_dir=*/true));
  }
  if (!job.output().metrics().empty()) {
    MT_RETURN_IF_ERROR(ProbeWritable("output.metrics", job.output().metrics(), /*is_dir=*/false));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<core::GPT2Config>> JobModelConfig(const Job& job, bool load_folder) {
  if (job.model().has_gpt()) {
    core::GPT2Config c = ToGPT2Config(job.model().gpt());
    MT_RETURN_IF_ERROR(ToJobSpecNames(c.Validate()));
    return std::optional<core::GPT2Config>(c);
  }
  const std::string& from = job.model().init_from();
  if (from.empty()) return std::optional<core::GPT2Config>();
  std::error_code ec;
  if (!std::filesystem::is_directory(from, ec)) {
    MT_ASSIGN_OR_RETURN(core::GPT2Config c, core::ReadLlmcHeader(from));
    return std::optional<core::GPT2Config>(c);
  }
  if (!load_folder) return std::optional<core::GPT2Config>();
  MT_ASSIGN_OR_RETURN(std::unique_ptr<core::GPT2> m, checkpoint::LoadModel(from));
  return std::optional<core::GPT2Config>(m->config());
}

namespace {}  // namespace

std::string FormatBytes(int64_t n) {
  if (n == std::numeric_limits<int64_t>::max()) return "more than 8 EiB";
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%d B", n) : absl::StrFormat("%.1f %s", v, units[u]);
}

namespace {

int64_t SatAdd(int64_t a, int64_t b) {
  return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max() : a + b;
}

int64_t FileBytes(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
}

// A number from a file such as /sys/fs/cgroup/memory.max; -1 if absent or "max".
int64_t ReadNumber(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word)) return -1;
  int64_t v = 0;
  return absl::SimpleAtoi(word, &v) ? v : -1;
}

int64_t Saturate(__int128 v) {
  constexpr __int128 kMax = std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(v > kMax ? kMax : v);
}

// Layer-wise offload (job.offload with a tier; offload::LayerStreamer's layout): the transformer
// layers leave the model's tensors. The device keeps the embedding and the head (params, and
// gradients when training with them) and a window of resident_blocks layer slots (params, and
// gradients), tagged kParams and kGrads as the streamer allocates them; the optimizer state is on
// the device only without optimizer_on_host (then all of it, as without offload). Sets
// need->offload_bytes to the host memory the tier takes outside the allocator.
void ApplyOffload(const Job& job, const core::GPT2Config& config, MemoryNeed* need) {
  const Offload& o = job.offload();
  const bool zo = job.optimizer().has_zo();  // forward-only: no gradients, no optimizer state
  using I = __int128;  // absurd sizes saturate, as in core::GPT2::EstimateMemory
  const I C = config.n_embd, L = config.n_layer, f = sizeof(float);
  const I embedding = (static_cast<I>(config.padded_vocab_size) + config.max_seq_len) * C;
  const I layer = 12 * C * C + 13 * C;
  const I head = 2 * C;
  const I all = embedding + L * layer + head;
  const I window = L > 0 ? static_cast<I>(o.resident_blocks()) * layer : 0;
  const I on_device = (embedding + head + window) * f;
  need->by_tag[core::MemoryTag::kParams] = Saturate(on_device);
  if (!zo) need->by_tag[core::MemoryTag::kGrads] = Saturate(on_device);
  // The optimizer state per parameter (AdamW 8 = two f32 tensors, Lion 4 or 2 = one f32 or bf16,
  // SGD 4 or 0), stepped on the host from the tier with optimizer_on_host.
  const int64_t state_per_param = OptimizerStateBytes(job.optimizer(), 1);
  const bool host_opt = !zo && o.optimizer_on_host();
  if (host_opt) need->by_tag[core::MemoryTag::kOptimizer] = 0;
  if (o.tier() == Offload::HOST) {
    // The tier is host memory: with optimizer_on_host every block's params, gradients and state
    // (the resident blocks' too: the host step reads them there), else the layers' params and
    // gradients.
    const I bytes = host_opt ? all * (2 * f + state_per_param) : L * layer * (zo ? f : 2 * f);
    need->offload_bytes = Saturate(bytes);
    need->offload_what = "offload tier (host memory)";
  } else {
    // The tier is a file; only its pinned staging pool is host memory: pieces of the largest
    // block (at most piece_mib), for params, gradients, one in flight and each f32 state tensor
    // (bf16 state: a class of its own), each rounded up to 4096 bytes.
    const I piece = std::min<I>(std::max({embedding, layer, head}),
                                static_cast<I>(o.piece_mib()) * (1 << 20) / f);
    auto round = [](I b) { return (b + 4095) / 4096 * 4096; };
    const int states = zo ? 0 : state_per_param == 8 ? 2 : state_per_param > 0 ? 1 : 0;
    const bool bf16 = state_per_param == 2;
    I pool = round(piece * f) * (3 + (bf16 ? 0 : states));
    if (bf16) pool += round(piece * 2) * (states + 1);
    need->offload_bytes = Saturate(pool);
    need->offload_what = "offload pinned pool";
  }
}

}  // namespace

int64_t MemoryNeed::total() const {
  return SatAdd(SatAdd(SatAdd(data_bytes, offload_bytes), runner_bytes), by_tag.total());
}

std::string MemoryNeed::ToString() const {
  std::string out;
  for (int t = 0; t < core::kNumMemoryTags; ++t) {
    if (by_tag.bytes[t] == 0) continue;
    absl::StrAppend(&out, out.empty() ? "" : ", ",
                    core::MemoryTagName(static_cast<core::MemoryTag>(t)), " ",
                    FormatBytes(by_tag.bytes[t]));
  }
  if (offload_bytes > 0) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", offload_what, " ", FormatBytes(offload_bytes));
  }
  if (runner_bytes > 0) absl::StrAppend(&out, ", FedAvg buffers ", FormatBytes(runner_bytes));
  if (data_bytes > 0) absl::StrAppend(&out, ", ", data_what, " ", FormatBytes(data_bytes));
  absl::StrAppend(&out, "; total ", FormatBytes(total()));
  return out;
}

absl::StatusOr<MemoryNeed> EstimateJobMemory(const Job& job, const core::GPT2Config& sizes) {
  // With padded_vocab_size filled in (ToGPT2Config leaves 0 = "the default"); an invalid config
  // is refused by core::GPT2::EstimateMemory below.
  core::GPT2Config config = sizes;
  (void)config.Validate();
  const Train& t = job.train();
  const core::Device device = t.device() == "cuda" ? core::Device::Cuda(0) : core::Device::Cpu();
  MemoryNeed need;
  const bool zo = job.optimizer().has_zo();
  // A zeroth-order rank runs its share of the 2q lanes forward-only (rank 0 has the most).
  const int P = std::max(1, job.parallel().perturbation());
  const int lanes = zo ? (2 * job.optimizer().zo().samples() + P - 1) / P : 1;
  const core::ModelMode mode = zo              ? core::ModelMode::kForwardOnly
                               : t.recompute() ? core::ModelMode::kTrainRecompute
                                               : core::ModelMode::kTrain;
  // A sequence-parallel rank holds its share of the tokens (rank 0 the most) and Ulysses'
  // head-sharded tensors and exchange buffers.
  const int S = std::max(1, job.parallel().sequence());
  const int local_T = static_cast<int>(parallel::SplitCount(t.seq_len(), S, 0));
  if (t.seq_len() > config.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "train.seq_len = %d exceeds the model's max_seq_len = %d; lower train.seq_len", t.seq_len(),
        config.max_seq_len));
  }
  MT_ASSIGN_OR_RETURN(
      need.by_tag,
      core::GPT2::EstimateMemory(
          config, {.B = t.batch_size(), .T = local_T, .mode = mode, .lanes = lanes}, device));
  if (S > 1) {
    const parallel::UlyssesBytes u = parallel::UlyssesAttention::Estimate(
        {.B = t.batch_size(),
         .T = local_T,
         .C = config.n_embd,
         .NH = config.n_head,
         .n_layer = config.n_layer,
         .mode = mode,
         .device = device},
        t.seq_len(), S, 0, {.keep_exchanged = job.parallel().sequence_keep_exchanged()});
    need.by_tag[core::MemoryTag::kActivations] += u.activations;
    need.by_tag[core::MemoryTag::kScratch] += u.scratch;
  }
  const int64_t params =
      need.by_tag[core::MemoryTag::kParams] / static_cast<int64_t>(sizeof(float));
  need.by_tag[core::MemoryTag::kOptimizer] = OptimizerStateBytes(job.optimizer(), params);
  if (zo) {  // optim::ZoPerturbation's two slots: the largest block, and the head's own block
    const int64_t C = config.n_embd;
    const int64_t embedding =
        (static_cast<int64_t>(config.padded_vocab_size) + config.max_seq_len) * C;
    const int64_t layer = 12 * C * C + 13 * C;
    // The noise cache, the same again, where one rank runs both lanes of a sample.
    const int64_t copies = job.optimizer().zo().cache_noise() && P == 1 ? 2 : 1;
    need.by_tag[core::MemoryTag::kScratch] +=
        copies * (std::max(embedding, layer) + 2 * C) * static_cast<int64_t>(sizeof(float));
  }
  if (job.offload().tier() != Offload::NONE) ApplyOffload(job, config, &need);
  // A token file is read whole: its tokens are its bytes past the 1 KiB header.
  for (const std::string& f : {job.data().train_tokens(), job.data().val_tokens()}) {
    need.data_bytes += std::max<int64_t>(0, FileBytes(f) - 1024);
  }
  return need;
}

namespace {

// The image count of an IDX file of Fashion-MNIST (`name` in `dir`, gzipped or plain, as
// federated::FashionMnist::Load finds it) from its header; `fallback` if it cannot be read
// (ValidateFiles and the load report why).
int64_t IdxCount(const std::string& dir, const std::string& name, int64_t fallback) {
  for (const std::string& path : {dir + "/" + name + ".gz", dir + "/" + name}) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) continue;
    gzFile f = gzopen(path.c_str(), "rb");
    if (f == nullptr) return fallback;
    unsigned char head[8];
    const int got = gzread(f, head, sizeof head);
    gzclose(f);
    if (got != static_cast<int>(sizeof head)) return fallback;
    return (int64_t{head[4]} << 24) | (int64_t{head[5]} << 16) | (int64_t{head[6]} << 8) | head[7];
  }
  return fallback;
}

}  // namespace

absl::StatusOr<MemoryNeed> EstimateFederatedJobMemory(const Job& job, int world_size) {
  const Federated& f = job.federated();
  const core::CnnConfig config = ToCnnConfig(job.model().cnn());
  MemoryNeed need;
  absl::StatusOr<core::MemoryEstimate> model = core::Cnn::EstimateMemory(
      config, {.B = f.batch_size(), .T = 1, .mode = core::ModelMode::kTrain},
      OptimizerStateBytes(job.optimizer(), 1));
  if (!model.ok()) return ToJobSpecNames(model.status());
  need.by_tag = *model;
  const std::vector<int64_t> numels = core::Cnn::BlockNumels(config).value();  // config is valid
  using I = __int128;  // absurd sizes saturate, as in core::Cnn::EstimateMemory
  I params = 0;
  for (int64_t n : numels) params += n;
  // Density 1 prunes nothing: every mask is all ones and none is kept.
  const Pruning::Method method = f.pruning().density() < 1 ? f.pruning().method() : Pruning::NONE;
  if (method != Pruning::NONE) {
    // Every block but the first (a mask replaced while the old one still exists: one more).
    I masks = 0, largest = 0;
    for (size_t s = 1; s < numels.size(); ++s) {
      masks += numels[s];
      largest = std::max<I>(largest, numels[s]);
    }
    need.by_tag[core::MemoryTag::kOther] =
        Saturate(masks + (method == Pruning::FEDTINY ? largest : 0));
  }
  // Fashion-MNIST as federated::FashionMnist::Load leaves it, and the raw bytes of the training
  // split while they are converted.
  const std::string& dir_field = job.data().fashion_mnist_dir();
  const std::string dir = dir_field.empty() ? federated::DefaultFashionMnistDir() : dir_field;
  const I pixels = federated::FashionMnist::kPixels;
  const I train = IdxCount(dir, "train-labels-idx1-ubyte", 60000);
  const I test = IdxCount(dir, "t10k-labels-idx1-ubyte", 10000);
  need.data_bytes = Saturate((train + test) * (pixels * 4 + 4) + train * (pixels + 1));
  need.data_what = "Fashion-MNIST";
  // A round's host buffers (federated::FedAvg::Round, TrainClient).
  const I P = std::max(1, world_size);
  const I k = std::min(f.clients_per_round(), f.num_clients());
  const I slots = (k + P - 1) / P;
  I host = 4 * params * (1 + slots + P * slots) + 8 * params;  // global_, send, recv, acc
  host += static_cast<I>(f.batch_size()) * (4 * pixels + 4);   // images_, labels_
  host += 3 * 8 * train;  // the partition, FedAvg's copy of it, a client's sample order
  I msg = 0;              // FedTiny's message: (index, gradient) pairs of one layer
  if (method != Pruning::NONE) host += (method == Pruning::FEDTINY ? 2 : 1) * params;  // masks
  if (method == Pruning::FEDTINY && f.pruning().adjust_rounds() > 0) {
    I layer = 0;
    for (size_t s = 1; s < numels.size(); ++s) layer = std::max<I>(layer, numels[s]);
    msg = 2 * std::min<I>(layer, static_cast<I>(std::ceil(f.pruning().initial_rate() * layer)));
  }
  host += 8 * (2 + msg) * (slots + P * slots) + 8 * msg * k;  // send_aux, recv_aux, messages
  need.runner_bytes = Saturate(host);
  return need;
}

AvailableMemory HostMemoryAvailable() {
  AvailableMemory a;
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      a.bytes = kb * 1024;
      a.source = "MemAvailable in /proc/meminfo";
      break;
    }
  }
  // A container's limit (cgroup v2) can be lower than what the machine has free.
  const int64_t limit = ReadNumber("/sys/fs/cgroup/memory.max");
  const int64_t used = ReadNumber("/sys/fs/cgroup/memory.current");
  if (limit > 0 && used >= 0 && (a.bytes < 0 || limit - used < a.bytes)) {
    a.bytes = std::max<int64_t>(0, limit - used);
    a.source = "the cgroup limit /sys/fs/cgroup/memory.max less memory.current";
  }
  const core::MemoryStats host = core::GetMemoryStats(core::Device::Cpu());
  if (host.budget > 0 && (a.bytes < 0 || host.budget - host.current < a.bytes)) {
    a.bytes = std::max<int64_t>(0, host.budget - host.current);
    a.source = "the host memory budget";
  }
  return a;
}

int RanksOnThisNode() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}) {
    int n = 0;
    if (const char* v = std::getenv(var); v != nullptr && absl::SimpleAtoi(v, &n) && n > 0) {
      return n;
    }
  }
  return 1;
}

absl::Status CheckMemory(const Job& job, const MemoryNeed& need, int64_t already) {
  if (job.train().device() == "cuda") return absl::OkStatus();  // the GPU's memory, not the host's
  const AvailableMemory avail = HostMemoryAvailable();
  if (avail.bytes < 0) return absl::OkStatus();
  const int ranks = RanksOnThisNode();
  const int64_t one = std::max<int64_t>(0, need.total() - already);
  const int64_t all = one > std::numeric_limits<int64_t>::max() / ranks
                          ? std::numeric_limits<int64_t>::max()
                          : one * ranks;
  if (all <= avail.bytes) return absl::OkStatus();
  const Train& t = job.train();
  std::string fix;
  if (job.has_federated()) {
    fix = "lower federated.batch_size, use fewer or narrower conv layers (model.cnn.layers)";
    if (job.federated().clients_per_round() > 1) {
      absl::StrAppend(&fix,
                      ", lower federated.clients_per_round (every rank gathers the weights of "
                      "each client of a round)");
    }
    if (!job.optimizer().has_sgd()) {
      absl::StrAppend(&fix, ", or use an optimizer with less state (sgd)");
    } else if (job.optimizer().sgd().momentum() != 0.0f) {
      absl::StrAppend(&fix, ", or drop SGD's momentum buffer (optimizer.sgd.momentum 0)");
    }
  } else {
    fix = "lower train.batch_size";
    if (t.seq_len() > 1) absl::StrAppend(&fix, " or train.seq_len");
    if (!t.recompute()) absl::StrAppend(&fix, ", set train.recompute = true");
    if (!job.optimizer().has_sgd() &&
        !(job.optimizer().has_lion() && job.optimizer().lion().momentum_dtype() == Lion::BF16)) {
      absl::StrAppend(&fix, ", use an optimizer with less state (lion with momentum_dtype BF16)");
    }
    if (job.offload().tier() != Offload::SSD && job.parallel().sequence() == 1) {
      absl::StrAppend(&fix, ", keep the transformer layers on an SSD (offload.tier SSD)");
    }
    absl::StrAppend(&fix, ", or use a smaller model (model.gpt.n_layer, n_embd, vocab_size)");
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "the job needs an estimated %s of memory per rank (%s)%s%s, but only %s is available (%s); "
      "%s",
      FormatBytes(need.total()), need.ToString(),
      ranks > 1 ? absl::StrFormat(", %s for the %d ranks on this node", FormatBytes(all), ranks)
                : "",
      already > 0 ? absl::StrFormat(", %s of it already allocated", FormatBytes(already)) : "",
      FormatBytes(avail.bytes), avail.source, fix));
}

std::string JobToText(const Job& job) {
  std::string out;
  pb::TextFormat::PrintToString(job, &out);
  return out;
}

core::GPT2Config ToGPT2Config(const Gpt& g) {
  return {.max_seq_len = g.max_seq_len(),
          .vocab_size = g.vocab_size(),
          .padded_vocab_size = g.padded_vocab_size(),
          .n_layer = g.n_layer(),
          .n_head = g.n_head(),
          .n_embd = g.n_embd()};
}

}  // namespace memtrain::launcher
