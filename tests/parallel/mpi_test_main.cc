// main() for tests that run under `mpirun -np N`: one world communicator for all tests, and only
// rank 0 prints gtest's report (every rank still fails the run if its assertions fail).
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "tests/parallel/mpi_test_env.h"

namespace memtrain::testing {
parallel::Communicator* g_world = nullptr;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto world = memtrain::parallel::CreateWorldCommunicator();
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  memtrain::testing::g_world = world->get();
  if ((*world)->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  // Agree on the outcome so a failure on any rank fails every rank's exit code.
  int32_t failed = rc != 0;
  (void)(*world)
      ->AllReduce(&failed, 1, memtrain::core::DType::kI32, memtrain::parallel::ReduceOp::kMax)
      .Wait();
  world->reset();
  memtrain::parallel::ShutdownCommunication();
  return failed ? 1 : 0;
}
