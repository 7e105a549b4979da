#include "core/threads.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace memtrain::core {
namespace {

TEST(ThreadsTest, EnvironmentDecidesTheDefault) {
  unsetenv("MEMTRAIN_THREADS");
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1", 1);
  const int all = DefaultThreads();
  EXPECT_EQ(all, AvailableCores());
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "64", 1);
  EXPECT_EQ(LocalRanks(), 64);
  EXPECT_EQ(DefaultThreads(), std::max(1, AvailableCores() / 64));
  setenv("MEMTRAIN_THREADS", "3", 1);
  EXPECT_EQ(DefaultThreads(), 3);
  unsetenv("MEMTRAIN_THREADS");
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int saved = GetThreads();
  SetThreads(1);
  EXPECT_EQ(GetThreads(), 1);
  SetThreads(saved);
}

}  // namespace
}  // namespace memtrain::core
