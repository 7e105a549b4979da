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

// One thread per counter block in [first, first + blocks); each emits the lanes inside
// [offset, offset + n): emit(i, z) with z the normal of element offset + i.
template <typename Emit>
__global__ void NormalsKernel(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                              uint64_t first, int64_t blocks, Emit emit) {
  for (int64_t b = GlobalThread(); b < blocks; b += GridStride()) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    uint32_t bits[4];
    PhiloxBlockBits(seed, stream, block, bits);
    float z[4];
    PhiloxNormals(bits, z);
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = static_cast<int64_t>(block * 4 + lane) - static_cast<int64_t>(offset);
      if (i >= 0 && i < n) emit(i, z[lane]);
    }
  }
}

// Explicit fmas, as core::FillNormal and core::AddNormal.
struct Fill {
  float* x;
  float mean, std;
  __device__ void operator()(int64_t i, float z) const { x[i] = fmaf(std, z, mean); }
};
// y may be x: each element is read, then written, by one thread.
struct Add {
  float* y;
  const float* x;
  float scale;
  __device__ void operator()(int64_t i, float z) const { y[i] = fmaf(scale, z, x[i]); }
};

template <typename Emit>
void Launch(cudaStream_t s, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, Emit emit) {
  if (n <= 0) return;
  const uint64_t first = offset / 4;
  const uint64_t last = (offset + static_cast<uint64_t>(n) - 1) / 4;
  const int64_t blocks = static_cast<int64_t>(last - first + 1);
  NormalsKernel<<<GridFor(blocks), kThreads, 0, s>>>(n, seed, stream, offset, first, blocks, emit);
  MT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void FillNormal(cudaStream_t s, float* x, int64_t n, uint64_t seed, uint64_t stream,
                uint64_t offset, float mean, float std) {
  Launch(s, n, seed, stream, offset, Fill{x, mean, std});
}

void AddNormal(cudaStream_t s, float* y, const float* x, int64_t n, uint64_t seed, uint64_t stream,
               uint64_t offset, float scale) {
  Launch(s, n, seed, stream, offset, Add{y, x, scale});
}

}  // namespace memtrain::core::cuda
