// Causal attention on CUDA: the launchers. The kernels and their tiling are described in
// attention_tiles.cuh. fp32 path: any HS from 1 to 128 (padded to 16, 32, 64 or 128 inside the
// kernels), any T. bf16 tensor-core path: HS == 64, any T. Backward is three kernels in stream
// order: D = rowwise dout . out (into the dq slots of dqkv), then dK/dV, then dQ.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/kernels/cuda/attention_tiles.cuh"
#include "core/kernels/cuda/ops.h"

namespace memtrain::core::cuda {
namespace {

namespace at = attention_tiles;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for n_tiles tiles of every (b, h).
unsigned GridBlocks(int64_t n_tiles, int64_t B, int64_t NH) {
  const int64_t blocks = n_tiles * B * NH;
  if (blocks > INT_MAX) {
    std::fprintf(stderr,
                 "memtrain: CUDA attention: %lld blocks exceed the grid limit (B*NH*T/64 "
                 "too large); split the batch\n",
                 static_cast<long long>(blocks));
    std::abort();
  }
  return static_cast<unsigned>(blocks);
}

// HS padded to the fp32 kernels' register layout: 16, 32, 64 or 128.
int PaddedHeadSize(int64_t C, int64_t NH) {
  const int64_t HS = NH > 0 ? C / NH : 0;
  if (NH <= 0 || C % NH != 0 || HS < 1 || HS > 128) {
    std::fprintf(stderr,
                 "memtrain: CUDA attention: C = %lld, NH = %lld: the head size C/NH must "
                 "be a whole number from 1 to 128\n",
                 static_cast<long long>(C), static_cast<long long>(NH));
    std::abort();
  }
  return HS <= 16 ? 16 : HS <= 32 ? 32 : HS <= 64 ? 64 : 128;
}

float Scale(int64_t HS) { return 1.0f / std::sqrt(static_cast<float>(HS)); }  // as on the CPU

// Whether the bf16 kernels may load rows of p with float4 (every row offset is a multiple of 4
// floats since C = 64 NH).
bool Aligned16(const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// A kernel that uses over 48 KiB of dynamic shared memory must opt in, once per device.
constexpr int kMaxDevices = 64;
template <auto kKernel>
void OptInSharedMemory(int bytes) {
  static std::once_flag once[kMaxDevices];
  int dev = 0;
  MT_CUDA_CHECK(cudaGetDevice(&dev));
  const auto set = [bytes] {
    MT_CUDA_CHECK(
        cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  };
  if (dev >= 0 && dev < kMaxDevices) {
    std::call_once(once[dev], set);
  } else {
    set();
  }
}

// D (B, T, NH) into column 0 of each head's dq slot of dqkv.
void LaunchDelta(cudaStream_t s, float* dqkv, const float* dout, const float* out, int64_t B,
                 int64_t T, int64_t C, int64_t NH) {
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>(CeilDiv(B * T * NH, kThreads), 16384);
  at::DeltaKernel<<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(dqkv, dout, out, B, T, C, NH,
                                                                     static_cast<int>(C / NH));
  MT_CUDA_CHECK_LAUNCH();
}

template <int kHS>
void ForwardF32(cudaStream_t s, float* out, float* lse, const float* qkv, int64_t B, int64_t T,
                int64_t C, int64_t NH) {
  using Cfg = at::F32<kHS>;
  const int HS = static_cast<int>(C / NH);
  const unsigned blocks = GridBlocks(CeilDiv(T, Cfg::kRows), B, NH);
  at::ForwardF32Kernel<kHS>
      <<<blocks, Cfg::kThreads, Cfg::kSmemBytes, s>>>(out, lse, qkv, B, T, C, NH, HS, Scale(HS));
  MT_CUDA_CHECK_LAUNCH();
}

template <int kHS>
void BackwardF32(cudaStream_t s, float* dqkv, const float* dout, const float* qkv, const float* lse,
                 int64_t B, int64_t T, int64_t C, int64_t NH) {
  using Cfg = at::F32<kHS>;
  const int HS = static_cast<int>(C / NH);
  const unsigned blocks = GridBlocks(CeilDiv(T, Cfg::kRows), B, NH);
  at::DkDvF32Kernel<kHS><<<blocks, Cfg::kThreads, Cfg::kSmemBytes, s>>>(dqkv, dout, qkv, lse, B, T,
                                                                        C, NH, HS, Scale(HS));
  MT_CUDA_CHECK_LAUNCH();
  at::DqF32Kernel<kHS><<<blocks, Cfg::kThreads, Cfg::kSmemBytes, s>>>(dqkv, dout, qkv, lse, B, T, C,
                                                                      NH, HS, Scale(HS));
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void AttentionForward(cudaStream_t s, float* out, float* lse, const float* qkv, int64_t B,
                      int64_t T, int64_t C, int64_t NH) {
  const int padded = PaddedHeadSize(C, NH);
  if (B <= 0 || T <= 0) return;
  switch (padded) {
    case 16:
      ForwardF32<16>(s, out, lse, qkv, B, T, C, NH);
      break;
    case 32:
      ForwardF32<32>(s, out, lse, qkv, B, T, C, NH);
      break;
    case 64:
      ForwardF32<64>(s, out, lse, qkv, B, T, C, NH);
      break;
    default:
      ForwardF32<128>(s, out, lse, qkv, B, T, C, NH);
      break;
  }
}

void AttentionBackward(cudaStream_t s, float* dqkv, const float* dout, const float* qkv,
                       const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                       int64_t NH) {
  const int padded = PaddedHeadSize(C, NH);
  if (B <= 0 || T <= 0) return;
  LaunchDelta(s, dqkv, dout, out, B, T, C, NH);
  switch (padded) {
    case 16:
      BackwardF32<16>(s, dqkv, dout, qkv, lse, B, T, C, NH);
      break;
    case 32:
      BackwardF32<32>(s, dqkv, dout, qkv, lse, B, T, C, NH);
      break;
    case 64:
      BackwardF32<64>(s, dqkv, dout, qkv, lse, B, T, C, NH);
      break;
    default:
      BackwardF32<128>(s, dqkv, dout, qkv, lse, B, T, C, NH);
      break;
  }
}

bool AttentionForwardBf16(cudaStream_t s, float* out, float* lse, const float* qkv, int64_t B,
                          int64_t T, int64_t C, int64_t NH) {
  if (NH <= 0 || C != at::tc::kHS * NH) return false;
  if (B <= 0 || T <= 0) return true;
  OptInSharedMemory<at::tc::ForwardBf16Kernel>(at::tc::kFwdSmemBytes);
  const unsigned blocks = GridBlocks(CeilDiv(T, at::tc::kFwdRows), B, NH);
  at::tc::ForwardBf16Kernel<<<blocks, at::tc::kFwdThreads, at::tc::kFwdSmemBytes, s>>>(
      out, lse, qkv, B, T, C, NH, Scale(at::tc::kHS), Aligned16(qkv));
  MT_CUDA_CHECK_LAUNCH();
  return true;
}

bool AttentionBackwardBf16(cudaStream_t s, float* dqkv, const float* dout, const float* qkv,
                           const float* out, const float* lse, int64_t B, int64_t T, int64_t C,
                           int64_t NH) {
  if (NH <= 0 || C != at::tc::kHS * NH) return false;
  if (B <= 0 || T <= 0) return true;
  OptInSharedMemory<at::tc::DkDvBf16Kernel>(at::tc::kDkDvSmemBytes);
  OptInSharedMemory<at::tc::DqBf16Kernel>(at::tc::kDqSmemBytes);
  LaunchDelta(s, dqkv, dout, out, B, T, C, NH);
  const unsigned blocks = GridBlocks(CeilDiv(T, at::tc::kTile), B, NH);
  const float scale = Scale(at::tc::kHS);
  at::tc::DkDvBf16Kernel<<<blocks, at::tc::kThreads, at::tc::kDkDvSmemBytes, s>>>(
      dqkv, dout, qkv, lse, B, T, C, NH, scale, Aligned16(qkv), Aligned16(dout));
  MT_CUDA_CHECK_LAUNCH();
  at::tc::DqBf16Kernel<<<blocks, at::tc::kThreads, at::tc::kDqSmemBytes, s>>>(
      dqkv, dout, qkv, lse, B, T, C, NH, scale, Aligned16(qkv), Aligned16(dout));
  MT_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace memtrain::core::cuda
