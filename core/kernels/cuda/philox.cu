// cuda::FillNormal and cuda::AddNormal: Philox4x32-10 normals on the device, bit for bit those of
// core::FillNormal (both run core/philox_math.h). Element offset + i is lane (offset + i) % 4 of
// counter block (offset + i) / 4 of (seed, stream), so any slice, launch shape or device gives the
// same values.
//
// philox_math.h writes every multiply-add as an explicit fma(), so contraction cannot change a
// result; the build still compiles this file with -fmad=false so that stays true of any edit.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/kernels/cuda/kernel_util.cuh"
#include "core/kernels/cuda/ops.h"
#include "core/philox_math.h"

namespace memtrain::core::cuda {

namespace {

// One thread per counter block in [first, first + blocks); each writes the lanes inside
// [offset, offset + n).
__global__ void FillNormalKernel(float* x, int64_t n, uint64_t seed, uint64_t stream,
                                 uint64_t offset, float mean, float std, uint64_t first,
                                 int64_t blocks) {
  for (int64_t b = GlobalThread(); b < blocks; b += GridStride()) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    uint32_t bits[4];
    PhiloxBlockBits(seed, stream, block, bits);
    float z[4];
    PhiloxNormals(bits, z);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = static_cast<int64_t>(block * 4 + lane) - static_cast<int64_t>(offset);
      // An explicit fma, as core::FillNormal.
      if (i >= 0 && i < n) x[i] = fmaf(std, z[lane], mean);
    }
  }
}

// The same walk for y = x + scale * z (y may be x: each element is read, then written, by one
// thread).
__global__ void AddNormalKernel(float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream,
                                uint64_t offset, float scale, uint64_t first, int64_t blocks) {
  for (int64_t b = GlobalThread(); b < blocks; b += GridStride()) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    uint32_t bits[4];
    PhiloxBlockBits(seed, stream, block, bits);
    float z[4];
    PhiloxNormals(bits, z);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = static_cast<int64_t>(block * 4 + lane) - static_cast<int64_t>(offset);
      if (i >= 0 && i < n) y[i] = fmaf(scale, z[lane], x[i]);
    }
  }
}

}  // namespace

void FillNormal(cudaStream_t s, float* x, int64_t n, uint64_t seed, uint64_t stream,
                uint64_t offset, float mean, float std) {
  if (n <= 0) return;
  const uint64_t first = offset / 4;
  const uint64_t last = (offset + static_cast<uint64_t>(n) - 1) / 4;
  const int64_t blocks = static_cast<int64_t>(last - first + 1);
  FillNormalKernel<<<GridFor(blocks), kThreads, 0, s>>>(x, n, seed, stream, offset, mean, std,
                                                        first, blocks);
  MT_CUDA_CHECK_LAUNCH();
}

void AddNormal(cudaStream_t s, float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream,
               uint64_t offset, float scale) {
  if (n <= 0) return;
  const uint64_t first = offset / 4;
  const uint64_t last = (offset + static_cast<uint64_t>(n) - 1) / 4;
  const int64_t blocks = static_cast<int64_t>(last - first + 1);
  AddNormalKernel<<<GridFor(blocks), kThreads, 0, s>>>(y, x, n, seed, stream, offset, scale, first,
                                                       blocks);
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace memtrain::core::cuda
