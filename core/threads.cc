#include "core/threads.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/numbers.h"

extern "C" void openblas_set_num_threads(int);

namespace memtrain::core {
namespace {

int EnvInt(const char* name) {
  const char* v = std::getenv(name);
  int out = 0;
  if (v == nullptr || !absl::SimpleAtoi(v, &out)) return 0;
  return out;
}

}  // namespace

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return omp_get_num_procs() > 0 ? omp_get_num_procs() : 1;
}

int LocalRanks() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                           "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"}) {
    int n = EnvInt(name);
    if (n > 0) return n;
  }
  return 1;
}

int DefaultThreads() {
  int forced = EnvInt("MEMTRAIN_THREADS");
  if (forced > 0) return forced;
  const int cores = AvailableCores();
  // A launcher that binds ranks has already given each its share of the cores.
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (online > 0 && cores < online) return cores;
  const int n = cores / LocalRanks();
  return n > 0 ? n : 1;
}

void SetThreads(int n) {
  if (n < 1) n = 1;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int GetThreads() { return omp_get_max_threads(); }

int InitThreads() {
  int n = DefaultThreads();
  SetThreads(n);
  return n;
}

}  // namespace memtrain::core
