// Compiled in a parent project that added memtrain with add_subdirectory: memtrain's headers,
// including the generated launcher/job.pb.h, through the targets' include paths.
#include "checkpoint/checkpoint.h"
#include "core/allocator.h"
#include "core/engine.h"
#include "launcher/job.pb.h"
#include "launcher/train.h"
#include "optim/adamw.h"
#include "parallel/communicator.h"

namespace parent {

int Steps(const memtrain::launcher::Job& job) { return job.train().steps(); }
int64_t Step(const memtrain::checkpoint::TrainState& state) { return state.step; }

}  // namespace parent
