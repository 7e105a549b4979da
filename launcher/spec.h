// Reading, overriding, completing and validating job specs (launcher/job.proto).
//
//   MT_ASSIGN_OR_RETURN(Job job, ParseJobFile("job.pbtxt"));        // file:line:col on errors
//   MT_RETURN_IF_ERROR(ApplyOverride(&job, "train.steps=10"));     // --set
//   FillDefaults(&job);                                            // the effective spec
//   MT_RETURN_IF_ERROR(ValidateJob(job, world_size));              // field paths and fixes
#ifndef MEMTRAIN_LAUNCHER_SPEC_H_
#define MEMTRAIN_LAUNCHER_SPEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/model/gpt2.h"
#include "launcher/job.pb.h"

namespace memtrain::launcher {

// InvalidArgument "path:line:column: message" on a syntax error, unknown field or wrong type;
// NotFound if the file cannot be read.
absl::StatusOr<Job> ParseJobFile(const std::string& path);
absl::StatusOr<Job> ParseJobText(const std::string& text, const std::string& name);

// `field.path=value`, e.g. "optimizer.adamw.lr=1e-3" or "data.train_tokens=x.bin".
absl::Status ApplyOverride(Job* job, const std::string& assignment);

// Sets every field of every section to its effective value (defaults made explicit; AdamW if no
// optimizer is given), so the printed spec says exactly what runs.
void FillDefaults(Job* job);

// Checks ranges and consistency of a filled spec: InvalidArgument naming the field path, what is
// wrong and what to do. Does not touch files.
absl::Status ValidateJob(const Job& job, int world_size);

// Checks that the files the spec reads exist (train/val tokens, model.init_from).
absl::Status ValidateFiles(const Job& job);

// Checks that what the run will write can be written, before anything is trained:
// checkpoint.dir is (or can be created as) a writable folder, output.metrics a writable file.
// PermissionDenied naming the field. Leaves nothing behind (probe files and any folders it had to
// create are removed again; an existing metrics file is not truncated).
absl::Status ValidateOutputs(const Job& job);

std::string JobToText(const Job& job);
core::GPT2Config ToGPT2Config(const Gpt& gpt);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_SPEC_H_
