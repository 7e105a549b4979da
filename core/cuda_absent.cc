// core/cuda.h in a build without the CUDA backend (no nvcc when memtrain was configured).
#include "core/cuda.h"

namespace memtrain::core {

bool CudaCompiledIn() { return false; }
int CudaDeviceCount() { return 0; }
std::string CudaUnavailableReason() {
  return "this build of memtrain has no CUDA backend (nvcc was not found when it was "
         "configured; install the CUDA toolkit and reconfigure with -DMEMTRAIN_CUDA=ON)";
}
absl::Status InitCuda(int) { return absl::FailedPreconditionError(CudaUnavailableReason()); }
void CudaProfile(bool) {}
std::string CudaProfileReport(int) { return ""; }
std::string CudaDeviceDescription(int) { return "no CUDA"; }

}  // namespace memtrain::core
