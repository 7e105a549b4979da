// Every collective against values computed locally from the rank numbers. Runs under
// `mpirun -np 2` (and -np 1 / 3 by hand); with one process it exercises the self communicator.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "parallel/process_grid.h"
#include "tests/parallel/mpi_test_env.h"

namespace memtrain::parallel {
namespace {

using core::DType;
using memtrain::testing::g_world;

float Value(int rank, int i) { return 1000.0f * rank + i; }

TEST(CommunicatorTest, AllReduceSumMaxMinInPlaceAndAsync) {
  const int R = g_world->size(), r = g_world->rank(), n = 1001;
  std::vector<float> sum(n), mx(n);
  for (int i = 0; i < n; ++i) sum[i] = mx[i] = Value(r, i);
  Work a = g_world->AllReduce(sum.data(), n, DType::kF32, ReduceOp::kSum);
  Work b = g_world->AllReduce(mx.data(), n, DType::kF32, ReduceOp::kMax);  // queued behind a
  ASSERT_TRUE(b.Wait().ok());
  ASSERT_TRUE(a.Wait().ok());
  for (int i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < R; ++q) want += Value(q, i);
    ASSERT_EQ(sum[i], want) << i;
    ASSERT_EQ(mx[i], Value(R - 1, i));
  }
  double d = r + 0.5;
  ASSERT_TRUE(g_world->AllReduce(&d, 1, DType::kF64, ReduceOp::kMin).Wait().ok());
  EXPECT_EQ(d, 0.5);
}

TEST(CommunicatorTest, AllGatherAndReduceScatter) {
  const int R = g_world->size(), r = g_world->rank(), n = 5;
  std::vector<float> mine(n), all(R * n);
  for (int i = 0; i < n; ++i) mine[i] = Value(r, i);
  ASSERT_TRUE(g_world->AllGather(mine.data(), all.data(), n, DType::kF32).Wait().ok());
  for (int q = 0; q < R; ++q)
    for (int i = 0; i < n; ++i) ASSERT_EQ(all[q * n + i], Value(q, i));
  std::vector<float> send(R * n), recv(n);
  for (int i = 0; i < R * n; ++i) send[i] = Value(r, i);
  ASSERT_TRUE(
      g_world->ReduceScatter(send.data(), recv.data(), n, DType::kF32, ReduceOp::kSum).Wait().ok());
  for (int i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < R; ++q) want += Value(q, r * n + i);
    ASSERT_EQ(recv[i], want);
  }
}

TEST(CommunicatorTest, AllToAllVWithUnevenCounts) {
  // Rank r sends (q + r + 1) elements to rank q, each holding 100*r + q.
  const int R = g_world->size(), r = g_world->rank();
  std::vector<int64_t> sc(R), sd(R), rc(R), rd(R);
  int64_t st = 0, rt = 0;
  for (int q = 0; q < R; ++q) {
    sc[q] = q + r + 1;
    sd[q] = st;
    st += sc[q];
    rc[q] = r + q + 1;
    rd[q] = rt;
    rt += rc[q];
  }
  std::vector<int32_t> send(st), recv(rt, -1);
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < sc[q]; ++i) send[sd[q] + i] = 100 * r + q;
  ASSERT_TRUE(
      g_world->AllToAllV(send.data(), sc, sd, recv.data(), rc, rd, DType::kI32).Wait().ok());
  for (int q = 0; q < R; ++q)
    for (int64_t i = 0; i < rc[q]; ++i) ASSERT_EQ(recv[rd[q] + i], 100 * q + r);
}

TEST(CommunicatorTest, BroadcastSendRecvBarrier) {
  const int R = g_world->size(), r = g_world->rank();
  std::vector<double> v(7, r == 0 ? 3.25 : -1.0);
  ASSERT_TRUE(g_world->Broadcast(v.data(), 7, DType::kF64, 0).Wait().ok());
  for (double x : v) EXPECT_EQ(x, 3.25);
  if (R >= 2) {
    int32_t token = 0;
    if (r == 0) {
      token = 42;
      ASSERT_TRUE(g_world->Send(&token, 1, DType::kI32, 1, 7).Wait().ok());
    } else if (r == 1) {
      ASSERT_TRUE(g_world->Recv(&token, 1, DType::kI32, 0, 7).Wait().ok());
      EXPECT_EQ(token, 42);
    }
  }
  EXPECT_TRUE(g_world->Barrier().Wait().ok());
}

TEST(ProcessGridTest, GroupsFollowTheLayout) {
  const int R = g_world->size(), r = g_world->rank();
  auto bad = ProcessGrid::Create(g_world, {.data = R + 1});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("mpirun -np"), std::string::npos);
  auto grid = ProcessGrid::Create(g_world, {.data = 1, .sequence = 1, .perturbation = R});
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->perturbation().size(), R);
  EXPECT_EQ(grid->perturbation_rank(), r);
  EXPECT_EQ(grid->data().size(), 1);
  // A sum over the perturbation group is the sum over everyone here.
  int32_t x = r + 1;
  ASSERT_TRUE(grid->perturbation().AllReduce(&x, 1, DType::kI32, ReduceOp::kSum).Wait().ok());
  EXPECT_EQ(x, R * (R + 1) / 2);
  EXPECT_EQ(grid->data_sequence().size(), 1);
}

// data_sequence() is every rank with the same perturbation index, ordered by d * S + s: with
// sequence = R it is the whole world, with perturbation = R it is the rank alone.
TEST(ProcessGridTest, DataSequenceGroupSpansDataAndSequence) {
  const int R = g_world->size(), r = g_world->rank();
  auto grid = ProcessGrid::Create(g_world, {.data = 1, .sequence = R, .perturbation = 1});
  ASSERT_TRUE(grid.ok()) << grid.status();
  EXPECT_EQ(grid->data_sequence().size(), R);
  EXPECT_EQ(grid->data_sequence().rank(), grid->data_rank() * R + grid->sequence_rank());
  std::vector<int32_t> all(R);
  int32_t me = r;
  ASSERT_TRUE(grid->data_sequence().AllGather(&me, all.data(), 1, DType::kI32).Wait().ok());
  for (int i = 0; i < R; ++i) EXPECT_EQ(all[i], i);  // world order = (d, s) order here
}

}  // namespace
}  // namespace memtrain::parallel
