#include "core/llmc.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/llmc_file.h"

namespace memtrain::core {
namespace {

int64_t LlmcNumParams(const GPT2Config& c) {
  const int64_t C = c.n_embd, L = c.n_layer;
  return int64_t{c.padded_vocab_size} * C + int64_t{c.max_seq_len} * C +
         L * (C + C + 3 * C * C + 3 * C + C * C + C + C + C + 4 * C * C + 4 * C + 4 * C * C + C) +
         C + C;
}

}  // namespace

std::vector<LlmcTensor> LlmcTensors(GPT2& model, bool grads) {
  const GPT2Config& c = model.config();
  const int64_t C = c.n_embd, L = c.n_layer;
  auto ptr = [&](int stage, const char* name) {
    ParamBlock& b = model.block(stage);
    return (grads ? b.grad(name) : b.param(name)).f32();
  };
  std::vector<LlmcTensor> out;
  auto whole = [&](int stage, const char* name, Shape shape) {
    out.push_back({name, shape, {ptr(stage, name)}, NumElements(shape)});
  };
  whole(0, "wte", {c.padded_vocab_size, C});
  whole(0, "wpe", {c.max_seq_len, C});
  for (const char* name : kGPT2LayerParams) {
    const ParamView& v = model.block(1).view(name);
    LlmcTensor t{name, {L}, {}, v.numel};
    for (int64_t d : v.shape) t.shape.push_back(d);
    for (int l = 0; l < L; ++l) t.parts.push_back(ptr(l + 1, name));
    out.push_back(std::move(t));
  }
  whole(model.head_stage(), "lnfw", {C});
  whole(model.head_stage(), "lnfb", {C});
  return out;
}

absl::StatusOr<GPT2Config> ReadLlmcHeader(const std::string& path) {
  MT_ASSIGN_OR_RETURN(LlmcFile hf, OpenLlmcFile(path, kLlmcCheckpointMagic, "checkpoint"));
  const int32_t* h = hf.header;
  const int64_t size = hf.size;
  if (h[1] != kLlmcCheckpointVersionF32) {
    return absl::DataLossError(absl::StrFormat(
        "%s: checkpoint version %d is not supported: expected %d (fp32)%s", path, h[1],
        kLlmcCheckpointVersionF32,
        h[1] == 5 ? "; version 5 is llm.c's bf16 format: export an fp32 (version 3) file" : ""));
  }
  GPT2Config c;
  c.max_seq_len = h[2];
  c.vocab_size = h[3];
  c.n_layer = h[4];
  c.n_head = h[5];
  c.n_embd = h[6];
  c.padded_vocab_size = h[7];
  if (c.padded_vocab_size <= 0) {
    return absl::DataLossError(
        absl::StrFormat("%s: padded vocab size %d in the header", path, c.padded_vocab_size));
  }
  absl::Status valid = c.Validate();
  if (!valid.ok()) {
    return absl::DataLossError(
        absl::StrFormat("%s: inconsistent header: %s", path, valid.message()));
  }
  const int64_t expected = kLlmcHeaderBytes + 4 * LlmcNumParams(c);
  if (size != expected) {
    return absl::DataLossError(absl::StrFormat(
        "%s: size is %d bytes but the header (%s) implies %d bytes; the file is truncated or "
        "not fp32",
        path, size, c.ToString(), expected));
  }
  return c;
}

absl::StatusOr<std::unique_ptr<GPT2>> LoadLlmcCheckpoint(const std::string& path,
                                                         const GPT2Config* expected,
                                                         Device device) {
  MT_ASSIGN_OR_RETURN(GPT2Config c, ReadLlmcHeader(path));
  if (expected != nullptr) {
    auto check = [&](const char* field, int want, int got) -> absl::Status {
      if (want == got || (want == 0 && std::strcmp(field, "padded_vocab_size") == 0)) {
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "model.gpt.%s = %d but checkpoint %s has %d; make them agree (or drop the field to "
          "take the checkpoint's)",
          field, want, path, got));
    };
    MT_RETURN_IF_ERROR(check("vocab_size", expected->vocab_size, c.vocab_size));
    MT_RETURN_IF_ERROR(
        check("padded_vocab_size", expected->padded_vocab_size, c.padded_vocab_size));
    MT_RETURN_IF_ERROR(check("n_layer", expected->n_layer, c.n_layer));
    MT_RETURN_IF_ERROR(check("n_head", expected->n_head, c.n_head));
    MT_RETURN_IF_ERROR(check("n_embd", expected->n_embd, c.n_embd));
    MT_RETURN_IF_ERROR(check("max_seq_len", expected->max_seq_len, c.max_seq_len));
  }
  MT_ASSIGN_OR_RETURN(std::unique_ptr<GPT2> model, GPT2::Create(c, device));
  MT_ASSIGN_OR_RETURN(File f, OpenForRead(path));
  if (std::fseek(f.get(), kLlmcHeaderBytes, SEEK_SET) != 0) {
    return absl::DataLossError(absl::StrFormat("%s: cannot seek past the header", path));
  }
  for (const LlmcTensor& t : LlmcTensors(*model, /*grads=*/false)) {
    for (float* p : t.parts) {
      MT_RETURN_IF_ERROR(ReadAll(f.get(), p, t.part_numel * sizeof(float), path));
    }
  }
  return model;
}

absl::Status WriteLlmcCheckpoint(GPT2& model, const std::string& path) {
  const GPT2Config& c = model.config();
  int32_t h[kLlmcHeaderInts] = {};
  h[0] = kLlmcCheckpointMagic;
  h[1] = kLlmcCheckpointVersionF32;
  h[2] = c.max_seq_len;
  h[3] = c.vocab_size;
  h[4] = c.n_layer;
  h[5] = c.n_head;
  h[6] = c.n_embd;
  h[7] = c.padded_vocab_size;
  std::vector<LlmcTensor> tensors = LlmcTensors(model, false);
  return WriteFileAtomically(path, [&](std::FILE* f) -> absl::Status {
    MT_RETURN_IF_ERROR(WriteAll(f, h, sizeof(h), path));
    for (const LlmcTensor& t : tensors) {
      for (const float* p : t.parts) {
        MT_RETURN_IF_ERROR(WriteAll(f, p, t.part_numel * sizeof(float), path));
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace memtrain::core
