// Against an installed memtrain, through memtrain::launcher (protobuf job spec, MPI communicator):
// parse a job, override a field, print the effective spec; a single-process communicator.
#include <cstdio>
#include <string>

#include "launcher/spec.h"
#include "parallel/communicator.h"

using namespace memtrain;

int main() {
  absl::StatusOr<launcher::Job> job = launcher::ParseJobText("train { steps: 3 }", "inline");
  if (!job.ok()) return std::fprintf(stderr, "FAIL: %s\n", job.status().ToString().c_str()), 1;
  if (absl::Status s = launcher::ApplyOverride(&*job, "train.steps=7"); !s.ok()) {
    return std::fprintf(stderr, "FAIL: %s\n", s.ToString().c_str()), 1;
  }
  launcher::FillDefaults(&*job);
  const std::string text = launcher::JobToText(*job);
  if (job->train().steps() != 7 || text.find("steps: 7") == std::string::npos) {
    return std::fprintf(stderr, "FAIL: the override is not in the spec:\n%s", text.c_str()), 1;
  }
  std::unique_ptr<parallel::Communicator> self = parallel::CreateSelfCommunicator();
  if (self->size() != 1 || self->rank() != 0)
    return std::fprintf(stderr, "FAIL: communicator\n"), 1;
  std::printf("launcher job OK\n");
  return 0;
}
