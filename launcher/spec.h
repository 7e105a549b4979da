// Reading, overriding, completing and validating job specs (launcher/job.proto).
//
//   MT_ASSIGN_OR_RETURN(Job job, ParseJobFile("job.pbtxt"));        // file:line:col on errors
//   MT_RETURN_IF_ERROR(ApplyOverride(&job, "train.steps=10"));     // --set
//   FillDefaults(&job);                                            // the effective spec
//   MT_RETURN_IF_ERROR(ValidateJob(job, world_size));              // field paths and fixes
#ifndef MEMTRAIN_LAUNCHER_SPEC_H_
#define MEMTRAIN_LAUNCHER_SPEC_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/model/cnn.h"
#include "core/model/gpt2.h"
#include "launcher/job.pb.h"

namespace memtrain::launcher {

// InvalidArgument "path:line:column: message" on a syntax error, unknown field or wrong type;
// NotFound if the file cannot be read.
absl::StatusOr<Job> ParseJobFile(const std::string& path);
absl::StatusOr<Job> ParseJobText(const std::string& text, const std::string& name);

// `field.path=value`, e.g. "optimizer.adamw.lr=1e-3" or "data.train_tokens=x.bin". A repeated
// string gets the value appended ("optimizer.no_decay=wpe"); a repeated number is replaced by the
// list ("model.cnn.layers=[8,-1,16,-1]").
absl::Status ApplyOverride(Job* job, const std::string& assignment);

// Sets every field of every section to its effective value (defaults made explicit; AdamW if no
// optimizer is given; model.gpt if no model is given, model.cnn in a federated job; model.cnn's
// default layers if it lists none), so the printed spec says exactly what runs. `federated`
// stays absent unless given.
void FillDefaults(Job* job);

// Checks ranges and consistency of a filled spec: InvalidArgument naming the field path, what is
// wrong and what to do. Does not touch files.
absl::Status ValidateJob(const Job& job, int world_size);

// Checks that the files the spec reads exist (train/val tokens, model.init_from, a federated
// job's data.fashion_mnist_dir folder), and with
// offload.tier SSD that offload.ssd_path is a directory this rank can create its file in
// (NotFound, InvalidArgument or PermissionDenied naming the field).
absl::Status ValidateFiles(const Job& job);

// Checks that what the run will write can be written, before anything is trained:
// checkpoint.dir is (or can be created as) a writable folder, output.metrics a writable file.
// PermissionDenied naming the field. Leaves nothing behind (probe files and any folders it had to
// create are removed again; an existing metrics file is not truncated).
absl::Status ValidateOutputs(const Job& job);

// ---- memory ----
// The model sizes of the job: model.gpt, or the header of an llm.c file in model.init_from.
// nullopt for a checkpoint folder in model.init_from unless `load_folder` (which reads the
// checkpoint, weights included).
absl::StatusOr<std::optional<core::GPT2Config>> JobModelConfig(const Job& job, bool load_folder);

// What one rank of the job allocates, before it allocates anything: per allocator tag
// (core::GPT2::EstimateMemory for the model on train.device, OptimizerStateBytes for the
// optimizer), plus the token files it reads into memory.
//
// With offload (offload.tier HOST or SSD) by_tag is what the device holds: the embedding and the
// head (params, and gradients unless optimizer.zo), a window of offload.resident_blocks
// transformer layers (the same), the activations and scratch as without offload, and the
// optimizer state only with optimizer_on_host = false. The host memory of the tier, which is not
// allocated through the allocator (so not under a tag), is offload_bytes: for HOST the layers'
// params and gradients, or with optimizer_on_host every block's params, gradients and optimizer
// state; for SSD (the tier is a file) only the pinned staging pool, (3 + the f32 state tensors)
// pieces of at most offload.piece_mib. total() and CheckMemory count it: on a CPU-only machine the
// "device" is host memory too.
struct MemoryNeed {
  core::MemoryEstimate by_tag;
  int64_t data_bytes = 0;  // token files or Fashion-MNIST (read whole, not by the allocator)
  std::string data_what = "token files";  // how ToString names it
  int64_t offload_bytes = 0;  // the offload tier's host memory (see above); 0 without offload
  std::string offload_what;   // how ToString names it: "offload tier (host memory)", ...
  int64_t runner_bytes = 0;   // a federated job's host buffers (see EstimateFederatedJobMemory)
  int64_t total() const;
  // "params 1.0 MiB, grads 1.0 MiB, optimizer 2.0 MiB, activations ..., total 4.1 MiB"
  std::string ToString() const;
};
absl::StatusOr<MemoryNeed> EstimateJobMemory(const Job& job, const core::GPT2Config& config);

// The same for a federated job (job.federated, model.cnn) on one of `world_size` ranks. by_tag:
// core::Cnn::EstimateMemory of model.cnn prepared for federated.batch_size images with the job's
// optimizer state (exactly what the allocator counts, the `peak_client_mib` metric), plus
// under kOther the pruning masks when federated.pruning.density < 1 (1 byte per element of every
// block but the first, which both methods keep dense, and with FEDTINY one block more while an
// adjustment replaces a mask: a bound, exact when every later block is pruned).
// data_bytes: Fashion-MNIST as loaded (float pixels and int32 labels of both splits, counts from
// the IDX headers) and the training split's raw IDX bytes, held while it is converted.
// runner_bytes: the host buffers of a round (federated::FedAvg): the global weights (f32), the
// clients' weights sent (ceil(clients_per_round / world_size) slots, f32) and gathered (x
// world_size), the weighted sum (f64), one batch of images, the client partition (3 x 8 bytes a
// training image), and with pruning the pruner's host masks (1 byte a parameter, twice for
// FedTiny) and FedTiny's (index, gradient) messages. What no allocator sees (the binary, its
// libraries, OpenBLAS and MPI buffers, the heap's slack) is not included.
// InvalidArgument naming the field for a model.cnn that Create would refuse.
absl::StatusOr<MemoryNeed> EstimateFederatedJobMemory(const Job& job, int world_size);

// The host memory this process can still use: MemAvailable of /proc/meminfo, lowered by a cgroup
// memory limit and by a host memory budget (core::SetMemoryBudget) when set. `source` says which.
struct AvailableMemory {
  int64_t bytes = -1;  // -1: unknown (no /proc/meminfo)
  std::string source;
};
AvailableMemory HostMemoryAvailable();

// "1.5 GiB"
std::string FormatBytes(int64_t n);

// ResourceExhausted if `ranks_on_node` ranks of `need` (less `already` bytes this rank has
// allocated) exceed the available host memory: the estimate per tag, the memory available and
// what to change (for a federated job: federated.batch_size, model.cnn.layers,
// federated.clients_per_round, the optimizer). OK for train.device "cuda" (its memory is the GPU's,
// not checked here) and when the available memory is unknown.
absl::Status CheckMemory(const Job& job, const MemoryNeed& need, int64_t already = 0);
// The ranks of this job on this node (from the MPI launcher's environment; 1 if unknown).
int RanksOnThisNode();

std::string JobToText(const Job& job);
core::GPT2Config ToGPT2Config(const Gpt& gpt);
// model.cnn as the model's config (empty layers: CnnConfig's default layers).
core::CnnConfig ToCnnConfig(const Cnn& cnn);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_SPEC_H_
