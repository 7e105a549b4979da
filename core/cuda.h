// The CUDA backend's entry points. They exist in every build: without CUDA (no nvcc at build
// time) they report that, so programs and tests can ask before they use a GPU and skip cleanly.
//
//   if (core::CudaDeviceCount() == 0) GTEST_SKIP() << core::CudaUnavailableReason();
//   MT_RETURN_IF_ERROR(core::InitCuda(/*device_index=*/0));
//   MT_ASSIGN_OR_RETURN(auto model, core::GPT2::Create(config, core::Device::Cuda(0)));
#ifndef MEMTRAIN_CORE_CUDA_H_
#define MEMTRAIN_CORE_CUDA_H_

#include <string>

#include "absl/status/status.h"

namespace memtrain::core {

// True when this build compiled the CUDA backend (core/kernels/cuda).
bool CudaCompiledIn();
// GPUs this process can use: 0 without the backend, a driver or a GPU. Never fails.
int CudaDeviceCount();
// Why CudaDeviceCount() is 0, for a skip or error message ("" when a GPU is there).
std::string CudaUnavailableReason();
// Selects GPU `device_index` for this process and registers the CUDA backend and allocator for
// Device::Cuda(device_index). Idempotent. FailedPrecondition without a usable GPU.
absl::Status InitCuda(int device_index = 0);
// Per-op GPU time: while on (or with MEMTRAIN_CUDA_PROFILE=1 in the environment at InitCuda),
// every backend op is timed with CUDA events on its stream. The report synchronises, lists ms
// per step (the total divided by `steps`) by op, and starts a new count.
void CudaProfile(bool on);
std::string CudaProfileReport(int steps);
// The GPU's name and memory, for logs ("NVIDIA H200, 139.8 GiB, sm_90").
std::string CudaDeviceDescription(int device_index = 0);

}  // namespace memtrain::core

#endif  // MEMTRAIN_CORE_CUDA_H_
