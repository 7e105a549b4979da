#include "checkpoint/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/llmc.h"
#include "nlohmann/json.hpp"

namespace memtrain::checkpoint {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
constexpr char kFormat[] = "memtrain-checkpoint/1";

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot read %s", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void FsyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

std::vector<core::NamedTensor> ModelTensors(core::GPT2& model) {
  std::vector<core::NamedTensor> out;
  for (int s = 0; s < model.num_stages(); ++s) {
    const core::ParamBlock& b = model.block(s);
    for (const core::ParamView& v : b.views()) {
      out.push_back({b.name() + "." + v.name, b.param(v.name)});
    }
  }
  return out;
}

Json ConfigJson(const core::GPT2Config& c) {
  return {{"n_layer", c.n_layer},         {"n_head", c.n_head},
          {"n_embd", c.n_embd},           {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len}, {"padded_vocab_size", c.padded_vocab_size}};
}

std::string StepName(int64_t step) { return absl::StrFormat("step_%08d", step); }

// "step_" and 8 digits: a checkpoint folder's name (not a temporary or an .old one).
bool IsStepName(const std::string& n) {
  if (n.size() != 13 || !absl::StartsWith(n, "step_")) return false;
  return std::all_of(n.begin() + 5, n.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The index of the first NaN or infinity in `t` (f32 or bf16, on any device), or -1; *value is
// that element as a float.
int64_t FirstNonFinite(const core::Tensor& t, float* value) {
  if (!t.defined()) return -1;
  std::vector<char> staging;  // a device tensor's bytes on the host
  const void* data = t.raw();
  if (t.device().type != core::DeviceType::kCpu) {
    staging.resize(t.nbytes());
    core::BackendFor(t.device())
        .CopyToHost(core::ExecContext::For(t.device()), staging.data(), t.raw(), t.nbytes());
    data = staging.data();
  }
  if (t.dtype() == core::DType::kF32) {
    const float* p = static_cast<const float*>(data);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (!std::isfinite(p[i])) {
        *value = p[i];
        return i;
      }
    }
  } else if (t.dtype() == core::DType::kBF16) {
    const uint16_t* p = static_cast<const uint16_t*>(data);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if ((p[i] & 0x7f80u) == 0x7f80u) {  // exponent all ones: inf or NaN
        *value = core::Bf16ToFloat(p[i]);
        return i;
      }
    }
  }
  return -1;
}

struct Saved {
  std::string name;    // step_NNNNNNNN
  int64_t serial = 0;  // write order in the folder; 0 = unknown (written before serials existed)
  int64_t step = 0;
};

// The checkpoint folders in `dir`, newest written first: by the serial in their state.json, then
// (for folders without one) by step.
std::vector<Saved> SavedCheckpoints(const std::string& dir) {
  std::vector<Saved> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (!IsStepName(n) || !e.is_directory(ec)) continue;
    Saved s{.name = n};
    absl::SimpleAtoi(n.substr(5), &s.step);
    absl::StatusOr<std::string> text = ReadWholeFile(e.path().string() + "/state.json");
    if (text.ok()) {
      Json m = Json::parse(*text, nullptr, false);
      if (m.is_object() && m.contains("serial") && m["serial"].is_number_integer()) {
        s.serial = m["serial"].get<int64_t>();
      }
    }
    out.push_back(s);
  }
  std::sort(out.begin(), out.end(), [](const Saved& a, const Saved& b) {
    return a.serial != b.serial ? a.serial > b.serial : a.step > b.step;
  });
  return out;
}

// What <dir>/latest names (surrounding whitespace removed), or "" if it cannot be read.
std::string LatestName(const std::string& dir) {
  absl::StatusOr<std::string> name = ReadWholeFile(dir + "/latest");
  return name.ok() ? std::string(absl::StripAsciiWhitespace(*name)) : "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Begin(const std::string& dir,
                                                                          const std::string& name) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrFormat("checkpoint.dir = \"%s\": cannot create it: %s", dir, ec.message()));
  }
  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter());
  w->dir_ = dir;
  w->name_ = name;
  w->final_dir_ = dir + "/" + name;
  for (const Saved& c : SavedCheckpoints(dir)) w->serial_ = std::max(w->serial_, c.serial + 1);
  w->tmp_ = absl::StrFormat("%s.tmp.%d", w->final_dir_, getpid());
  fs::remove_all(w->tmp_, ec);
  fs::create_directories(w->tmp_, ec);
  if (ec) {
    const std::string why = ec.message();
    w->published_ = true;  // nothing to remove
    return absl::PermissionDeniedError(absl::StrFormat("cannot create %s: %s", w->tmp_, why));
  }
  return w;
}

CheckpointWriter::~CheckpointWriter() {
  std::error_code ec;
  if (!published_) fs::remove_all(tmp_, ec);  // on any failure, no temporary folder is left
}

absl::Status CheckpointWriter::Publish(const std::string& state_json, int keep) {
  const std::string& dir = dir_;
  const std::string& name = name_;
  const std::string& tmp = tmp_;
  const std::string& final_dir = final_dir_;
  std::error_code ec;
  MT_RETURN_IF_ERROR(core::WriteFileAtomically(tmp + "/state.json", [&](std::FILE* f) {
    return core::WriteAll(f, state_json.data(), state_json.size(), tmp + "/state.json");
  }));
  FsyncDir(tmp);
  // Replace an existing checkpoint of the same name only after the new one is complete.
  const std::string old = final_dir + ".old";
  if (fs::exists(final_dir)) {
    fs::remove_all(old, ec);
    fs::rename(final_dir, old, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrFormat("rename %s -> %s failed: %s", final_dir, old, ec.message()));
    }
  }
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    const std::string why = ec.message();
    if (fs::exists(old)) fs::rename(old, final_dir, ec);  // put the previous one back
    return absl::UnavailableError(
        absl::StrFormat("rename %s -> %s failed: %s", tmp, final_dir, why));
  }
  published_ = true;
  fs::remove_all(old, ec);
  FsyncDir(dir);
  MT_RETURN_IF_ERROR(core::WriteFileAtomically(dir + "/latest", [&](std::FILE* f) {
    return core::WriteAll(f, name.data(), name.size(), dir + "/latest");
  }));
  // Keep the `keep` checkpoints written last (not those of the highest steps: a run that restarts
  // lower in the same folder keeps what it writes); never the one just written or `latest`.
  const std::string latest = LatestName(dir);
  int kept = 0;
  for (const Saved& c : SavedCheckpoints(dir)) {
    if (kept < keep || c.name == name || c.name == latest) {
      ++kept;
      continue;
    }
    fs::remove_all(dir + "/" + c.name, ec);
  }
  return absl::OkStatus();
}

absl::Status SaveCheckpoint(const std::string& dir, int keep, const TrainState& state,
                            core::GPT2& model, const optim::Optimizer& opt) {
  const std::string name = StepName(state.step);
  const std::string final_dir = dir + "/" + name;
  // A NaN or infinity never reaches a checkpoint: refuse before anything is written.
  auto refuse_nonfinite = [&](const std::string& what, const core::Tensor& t) -> absl::Status {
    float value = 0.0f;
    const int64_t at = FirstNonFinite(t, &value);
    if (at < 0) return absl::OkStatus();
    return absl::AbortedError(absl::StrFormat(
        "not saving %s: %s holds a non-finite value (%g at index %d), the training diverged; "
        "the checkpoints already in %s are left as they were",
        final_dir, what, value, at, dir));
  };
  for (const core::NamedTensor& nt : ModelTensors(model)) {
    MT_RETURN_IF_ERROR(refuse_nonfinite("weight " + nt.name, nt.tensor));
  }
  for (int s = 0; s < model.num_stages(); ++s) {
    for (const auto& [n, t] : opt.State(s)) {
      MT_RETURN_IF_ERROR(refuse_nonfinite("optimizer state " + model.block(s).name() + "." + n, t));
    }
  }
  MT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> writer, CheckpointWriter::Begin(dir, name));
  const std::string& tmp = writer->tmp();

  MT_ASSIGN_OR_RETURN(core::FileDigest model_digest,
                      core::WriteSafetensors(tmp + "/model.safetensors", ModelTensors(model),
                                             {{"format", "memtrain"}, {"model", "gpt2"}}));
  std::vector<core::NamedTensor> state_tensors;
  for (int s = 0; s < model.num_stages(); ++s) {
    for (const auto& [name, t] : opt.State(s)) {
      state_tensors.push_back({model.block(s).name() + "." + name, t});
    }
  }
  MT_ASSIGN_OR_RETURN(
      core::FileDigest opt_digest,
      core::WriteSafetensors(tmp + "/optimizer.safetensors", state_tensors,
                             {{"optimizer", opt.name()}, {"step", std::to_string(opt.step())}}));
  Json files = Json::object();
  files["model.safetensors"] = {{"bytes", model_digest.bytes}, {"crc32", model_digest.crc32}};
  files["optimizer.safetensors"] = {{"bytes", opt_digest.bytes}, {"crc32", opt_digest.crc32}};
  Json manifest = {{"format", kFormat},
                   {"step", state.step},
                   {"serial", writer->serial()},
                   {"batches_consumed", state.batches_consumed},
                   {"optimizer_step", opt.step()},
                   {"model", ConfigJson(model.config())},
                   {"files", files},
                   {"job", state.job_text}};
  return writer->Publish(manifest.dump(2), keep);
}

std::vector<std::string> ListCheckpoints(const std::string& dir) {
  std::vector<std::string> out;
  for (const Saved& c : SavedCheckpoints(dir)) out.push_back(dir + "/" + c.name);
  return out;
}

int RemoveStaleTemporaries(const std::string& dir) {
  std::error_code ec;
  int removed = 0;
  std::vector<fs::path> olds;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    const size_t at = n.rfind(".tmp.");
    int pid = 0;
    if (at != std::string::npos && absl::SimpleAtoi(n.substr(at + 5), &pid) && pid > 0) {
      // Left by a process that no longer runs (a live one may be saving right now).
      if (pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH) {
        std::error_code rm;
        fs::remove_all(e.path(), rm);
        if (!rm) ++removed;
      }
    } else if (absl::EndsWith(n, ".old") && IsStepName(n.substr(0, n.size() - 4))) {
      olds.push_back(e.path());
    }
  }
  // step_N.old is the previous step_N while a save of the same step replaced it: if the new one
  // is there, the old one is garbage; if not, the save died between the renames: put it back.
  for (const fs::path& old : olds) {
    fs::path current = old;
    current.replace_extension();
    std::error_code rm;
    if (fs::exists(current, rm)) {
      fs::remove_all(old, rm);
    } else {
      fs::rename(old, current, rm);
    }
    if (!rm) ++removed;
  }
  return removed;
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadWholeFile(dir + "/latest");
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrFormat(
        "no checkpoint to resume from: %s/latest does not exist; run without --resume first", dir));
  }
  // Written without a newline, but one added by hand (echo step_N > latest) is fine.
  const std::string name(absl::StripAsciiWhitespace(*text));
  const std::string folder = dir + "/" + name;
  if (name.empty() || name.find('/') != std::string::npos || !fs::is_directory(folder)) {
    return absl::DataLossError(
        absl::StrFormat("%s/latest names %s, which does not exist; remove %s/latest to start over",
                        dir, folder, dir));
  }
  return folder;
}

namespace {

absl::StatusOr<LoadedCheckpoint> LoadCheckpointUnguarded(const std::string& folder) {
  MT_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(folder + "/state.json"));
  Json m = Json::parse(text, nullptr, false);
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrFormat("checkpoint %s: %s", folder, why));
  };
  if (m.is_discarded() || !m.is_object() || m.value("format", "") != kFormat) {
    return bad("state.json is missing, corrupt or of another format");
  }
  // Read both files once and check their sizes and checksums before using either.
  core::SafetensorsFile read[2];
  const char* names[2] = {"model.safetensors", "optimizer.safetensors"};
  for (int i = 0; i < 2; ++i) {
    const char* f = names[i];
    if (!m["files"].contains(f)) return bad(absl::StrCat("state.json lists no ", f));
    const int64_t want_bytes = m["files"][f]["bytes"].get<int64_t>();
    const uint32_t want_crc = m["files"][f]["crc32"].get<uint32_t>();
    MT_ASSIGN_OR_RETURN(int64_t size, core::FileSize(folder + "/" + f));
    if (size != want_bytes) {
      return bad(absl::StrFormat("%s is %d bytes, expected %d: truncated; use an older checkpoint",
                                 f, size, want_bytes));
    }
    MT_ASSIGN_OR_RETURN(read[i], core::SafetensorsFile::Read(folder + "/" + f));
    if (read[i].digest().crc32 != want_crc) {
      return bad(
          absl::StrFormat("%s fails its CRC-32 check (file corrupt); use an older "
                          "checkpoint",
                          f));
    }
  }
  const Json& c = m["model"];
  core::GPT2Config cfg{.max_seq_len = c["max_seq_len"].get<int>(),
                       .vocab_size = c["vocab_size"].get<int>(),
                       .padded_vocab_size = c["padded_vocab_size"].get<int>(),
                       .n_layer = c["n_layer"].get<int>(),
                       .n_head = c["n_head"].get<int>(),
                       .n_embd = c["n_embd"].get<int>()};
  LoadedCheckpoint out;
  MT_ASSIGN_OR_RETURN(out.model, core::GPT2::Create(cfg));
  for (const core::NamedTensor& nt : ModelTensors(*out.model)) {
    MT_RETURN_IF_ERROR(read[0].CopyTo(nt.name, nt.tensor));
  }
  out.optimizer = std::move(read[1]);
  out.state.step = m["step"].get<int64_t>();
  out.state.batches_consumed = m["batches_consumed"].get<int64_t>();
  out.state.job_text = m.value("job", "");
  return out;
}

}  // namespace

absl::StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& folder) {
  // A manifest with a missing or mistyped field makes the JSON library throw: refuse the
  // checkpoint instead of crashing.
  try {
    return LoadCheckpointUnguarded(folder);
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrFormat(
        "checkpoint %s: state.json lacks a field or has one of the wrong type (%s); use an older "
        "checkpoint",
        folder, e.what()));
  }
}

absl::Status RestoreOptimizer(const LoadedCheckpoint& ckpt, core::GPT2& model,
                              optim::Optimizer* opt) {
  const auto& meta = ckpt.optimizer.metadata();
  auto kind = meta.find("optimizer"), step = meta.find("step");
  if (kind == meta.end() || step == meta.end()) {
    return absl::DataLossError("optimizer.safetensors lacks the optimizer name or step");
  }
  if (kind->second != opt->name()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the checkpoint holds %s state but the job's optimizer is %s; resume with the same "
        "optimizer, or start a new run with model.init_from pointing at the checkpoint",
        kind->second, opt->name()));
  }
  for (int s = 0; s < model.num_stages(); ++s) {
    for (const auto& [name, t] : opt->State(s)) {
      MT_RETURN_IF_ERROR(ckpt.optimizer.CopyTo(model.block(s).name() + "." + name, t));
    }
  }
  opt->set_step(std::stoll(step->second));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<core::GPT2>> LoadModel(const std::string& path) {
  if (fs::is_directory(path)) {
    std::string folder = path;
    if (!fs::exists(path + "/state.json")) {
      MT_ASSIGN_OR_RETURN(folder, LatestCheckpoint(path));
    }
    MT_ASSIGN_OR_RETURN(LoadedCheckpoint c, LoadCheckpoint(folder));
    return std::move(c.model);
  }
  return core::LoadLlmcCheckpoint(path);
}

}  // namespace memtrain::checkpoint
