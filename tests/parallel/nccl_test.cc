// The NCCL communicator on one process (bootstrapped over the self communicator): every
// collective's result, and that a collective follows the compute stream's earlier work and that
// WaitOn orders later work after it. Skips where the build has no NCCL or no GPU is present. (More
// ranks need one GPU each: NCCL refuses two ranks on one GPU.)
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/backend.h"
#include "core/cuda.h"
#include "core/philox.h"
#include "core/tensor.h"
#include "parallel/nccl_communicator.h"

namespace memtrain::parallel {
namespace {

TEST(NcclBuild, CompiledWithTheCudaBackend) {
  // NCCL comes with the CUDA backend wherever libnccl is installed beside the toolkit.
  if (!core::CudaCompiledIn()) {
    EXPECT_FALSE(NcclCompiledIn());
  }
  if (!NcclCompiledIn()) {
    auto self = CreateSelfCommunicator();
    auto c = CreateNcclCommunicator(*self, core::ExecContext::For(core::Device::Cuda(0)));
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  }
}

TEST(NcclTest, CollectivesOnOneRankFollowComputeAndOrderLaterWork) {
  if (!NcclCompiledIn()) GTEST_SKIP() << "this build has no NCCL";
  if (core::CudaDeviceCount() == 0) GTEST_SKIP() << "no GPU: " << core::CudaUnavailableReason();
  ASSERT_TRUE(core::InitCuda(0).ok());
  const core::Device gpu = core::Device::Cuda(0);
  const core::ExecContext ctx = core::ExecContext::For(gpu);
  core::Backend& be = core::BackendFor(gpu);
  auto self = CreateSelfCommunicator();
  auto nccl = CreateNcclCommunicator(*self, ctx);
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  Communicator& c = **nccl;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);

  const int64_t n = 1 << 22;  // large enough that an unordered copy would see stale data
  auto a = core::Tensor::Zeros({n}, core::DType::kF32, core::MemoryTag::kOther, gpu).value();
  auto b = core::Tensor::Zeros({n}, core::DType::kF32, core::MemoryTag::kOther, gpu).value();
  std::vector<float> expect(n), got(n);
  core::FillNormal(absl::MakeSpan(expect), 7, 1, 0, 0.0f, 1.0f);
  // Enqueued on the compute stream; the gather on the communication stream must follow it.
  be.FillNormal(ctx, a.f32(), n, 7, 1, 0, 0.0f, 1.0f);
  Work g = c.AllGather(a.f32(), b.f32(), n, core::DType::kF32);
  ASSERT_TRUE(g.WaitOn(ctx).ok());
  be.CopyToHost(ctx, got.data(), b.f32(), n * sizeof(float));
  EXPECT_EQ(got, expect) << "AllGather after FillNormal";

  ASSERT_TRUE(c.AllReduce(b.f32(), n, core::DType::kF32, ReduceOp::kSum).Wait().ok());
  be.CopyToHost(ctx, got.data(), b.f32(), n * sizeof(float));
  EXPECT_EQ(got, expect) << "AllReduce over one rank";

  be.SetZero(ctx, b.raw(), b.nbytes());
  ASSERT_TRUE(c.AllToAllV(a.f32(), {n / 2}, {n / 4}, b.f32(), {n / 2}, {0}, core::DType::kF32)
                  .WaitOn(ctx)
                  .ok());
  be.CopyToHost(ctx, got.data(), b.f32(), n * sizeof(float));
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + n / 2, expect.begin() + n / 4))
      << "AllToAllV chunk";
  EXPECT_EQ(got[n / 2], 0.0f) << "AllToAllV wrote past its count";

  EXPECT_TRUE(c.Broadcast(a.f32(), n, core::DType::kF32, 0).Wait().ok());
  EXPECT_TRUE(c.Barrier().Wait().ok());
  EXPECT_EQ(c.AllReduce(a.raw(), n, core::DType::kU16, ReduceOp::kSum).Wait().code(),
            absl::StatusCode::kInvalidArgument);
  auto sub = c.Split(0, 0);
  ASSERT_TRUE(sub.ok()) << sub.status();
  EXPECT_EQ((*sub)->size(), 1);
}

}  // namespace
}  // namespace memtrain::parallel
