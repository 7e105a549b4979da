// Small device helpers shared by the CUDA kernel files (core/kernels/cuda/*.cu): launch sizes for
// grid-stride loops, 64-bit thread indices, warp sums and the bf16 conversions of core/dtype.h.
//
//   ScaleKernel<<<GridFor(n), kThreads, 0, s>>>(x, n);
//   for (int64_t i = GlobalThread(); i < n; i += GridStride()) x[i] *= 2.0f;
#ifndef MEMTRAIN_CORE_KERNELS_CUDA_KERNEL_UTIL_CUH_
#define MEMTRAIN_CORE_KERNELS_CUDA_KERNEL_UTIL_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace memtrain::core::cuda {

constexpr int kThreads = 256;  // threads per block of the elementwise kernels

// Blocks for a grid-stride loop over n > 0 items. The cap keeps gridDim.x in range for any n;
// 65536 blocks of 256 threads still fill an H200 many times over.
inline unsigned GridFor(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, 65536));
}

// Indices are 64-bit: N * Vp and parameter counts exceed 2^31.
__device__ __forceinline__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridStride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Sum over a full warp. A butterfly: at every step lanes i and i ^ offset add the same two values
// (addition commutes exactly), so all lanes end with the same bits.
__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// core::FloatToBf16: round to nearest even; NaN stays NaN (quiet), infinities stay infinite.
__device__ __forceinline__ uint16_t FloatToBf16Bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

}  // namespace memtrain::core::cuda

#endif  // MEMTRAIN_CORE_KERNELS_CUDA_KERNEL_UTIL_CUH_
