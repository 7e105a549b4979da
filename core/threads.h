// The one place that decides how many threads a rank computes with. OpenBLAS is the OpenMP build,
// so our kernels and sgemm share one OpenMP pool. By default a rank takes the cores of its
// affinity mask when the launcher bound it to a subset, else cores / ranks-on-node (read from the
// launcher's environment: OMPI_COMM_WORLD_LOCAL_SIZE and friends); at least 1.
// MEMTRAIN_THREADS overrides it.
//
//   int n = core::InitThreads();      // once, at start-up
//   core::SetThreads(1);              // e.g. for a reference run
#ifndef MEMTRAIN_CORE_THREADS_H_
#define MEMTRAIN_CORE_THREADS_H_

namespace memtrain::core {

// Cores usable by this process (affinity mask), at least 1.
int AvailableCores();
// Ranks of this job on this node, from the MPI launcher's environment (1 without one).
int LocalRanks();
// MEMTRAIN_THREADS if set, else the policy above.
int DefaultThreads();
// Sets OpenMP (and so OpenBLAS) to `n` threads.
void SetThreads(int n);
int GetThreads();
// SetThreads(DefaultThreads()); returns the count.
int InitThreads();

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_THREADS_H_
