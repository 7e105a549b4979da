#ifndef MEMTRAIN_TESTS_PARALLEL_MPI_TEST_ENV_H_
#define MEMTRAIN_TESTS_PARALLEL_MPI_TEST_ENV_H_

#include "parallel/communicator.h"

namespace memtrain::testing {
// The world of the test run (set by mpi_test_main.cc).
extern parallel::Communicator* g_world;
}  // namespace memtrain::testing

#endif  // MEMTRAIN_TESTS_PARALLEL_MPI_TEST_ENV_H_
