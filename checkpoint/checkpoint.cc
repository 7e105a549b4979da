#include "checkpoint/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
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

}  // namespace

absl::Status SaveCheckpoint(const std::string& dir, int keep, const TrainState& state,
                            core::GPT2& model, const optim::Optimizer& opt) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrFormat("checkpoint.dir = \"%s\": cannot create it: %s", dir, ec.message()));
  }
  const std::string name = StepName(state.step);
  const std::string final_dir = dir + "/" + name;
  const std::string tmp = absl::StrFormat("%s.tmp.%d", final_dir, getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrFormat("cannot create %s", tmp));

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
                   {"batches_consumed", state.batches_consumed},
                   {"optimizer_step", opt.step()},
                   {"model", ConfigJson(model.config())},
                   {"files", files},
                   {"job", state.job_text}};
  const std::string text = manifest.dump(2);
  MT_RETURN_IF_ERROR(core::WriteFileAtomically(tmp + "/state.json", [&](std::FILE* f) {
    return core::WriteAll(f, text.data(), text.size(), tmp + "/state.json");
  }));
  FsyncDir(tmp);
  // Replace an existing checkpoint of the same step only after the new one is complete.
  const std::string old = final_dir + ".old";
  if (fs::exists(final_dir)) fs::rename(final_dir, old, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrFormat("rename %s -> %s failed: %s", tmp, final_dir, ec.message()));
  }
  fs::remove_all(old, ec);
  FsyncDir(dir);
  MT_RETURN_IF_ERROR(core::WriteFileAtomically(dir + "/latest", [&](std::FILE* f) {
    return core::WriteAll(f, name.data(), name.size(), dir + "/latest");
  }));
  // Keep the newest `keep` complete checkpoints.
  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && absl::StartsWith(n, "step_") && n.size() == 13) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + keep < steps.size(); ++i) fs::remove_all(dir + "/" + steps[i], ec);
  return absl::OkStatus();
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& dir) {
  absl::StatusOr<std::string> name = ReadWholeFile(dir + "/latest");
  if (!name.ok()) {
    return absl::NotFoundError(absl::StrFormat(
        "no checkpoint to resume from: %s/latest does not exist; run without --resume first", dir));
  }
  const std::string folder = dir + "/" + *name;
  if (!fs::is_directory(folder)) {
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
