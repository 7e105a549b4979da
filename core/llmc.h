// The file formats of llm.c, so memtrain reads and writes what the field already has.
//
// Checkpoint (version 3, fp32): 256 int32 header [20240326, 3, maxT, V, L, NH, C, Vp], then 16
// fp32 tensors back to back: wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C)
// qkvb (L,3C) attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C) fcb (L,4C)
// fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C). memtrain keeps each layer in its own block,
// so per-layer tensors are gathered / scattered across blocks.
// Tokens: 256 int32 header [20240520, 1, ntok], then ntok uint16; size exactly 1024 + 2*ntok.
//
//   MT_ASSIGN_OR_RETURN(std::unique_ptr<GPT2> model, core::LoadLlmcCheckpoint("gpt2_124M.bin"));
//   MT_RETURN_IF_ERROR(core::WriteLlmcCheckpoint(*model, "out.bin"));
#ifndef MEMTRAIN_CORE_LLMC_H_
#define MEMTRAIN_CORE_LLMC_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/llmc_file.h"
#include "core/model/gpt2.h"
#include "core/token_file.h"  // token files moved; kept here for existing includes

namespace memtrain::core {

// One llm.c tensor as pieces in memtrain's blocks: parts[i] points at layer i's slice (or the
// whole tensor for wte, wpe, lnfw, lnfb).
struct LlmcTensor {
  std::string name;
  Shape shape;                // the llm.c shape, e.g. (L, 3C, C)
  std::vector<float*> parts;  // each part_numel floats
  int64_t part_numel = 0;
};
// The 16 tensors in file order, over the model's parameters (grads = false) or gradients.
std::vector<LlmcTensor> LlmcTensors(GPT2& model, bool grads);

// Reads and checks the header: DataLoss naming the file on a wrong magic, version or size.
absl::StatusOr<GPT2Config> ReadLlmcHeader(const std::string& path);

// Builds a model from a checkpoint. If `expected` is given, its sizes must match the file's
// (InvalidArgument naming the field otherwise). Nothing is returned half loaded.
absl::StatusOr<std::unique_ptr<GPT2>> LoadLlmcCheckpoint(const std::string& path,
                                                         const GPT2Config* expected = nullptr,
                                                         Device device = Device::Cpu());
// Writes atomically.
absl::Status WriteLlmcCheckpoint(GPT2& model, const std::string& path);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_LLMC_H_
