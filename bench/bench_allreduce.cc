// All-reduce benchmark for the MPI communicator (host memory):
//   mpirun -np 2 bench_allreduce
// For each size: median time of an in-place fp32 sum and the bus bandwidth 2(n-1)/n * bytes / t
// (the convention of nccl-tests), on this machine.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "parallel/communicator.h"

using namespace memtrain;

int main() {
  auto world = parallel::CreateWorldCommunicator().value();
  const int n = world->size();
  for (int64_t mib : {1, 4, 13, 64}) {
    const int64_t count = mib * 1048576 / 4;
    std::vector<float> buf(count, 1.0f);
    std::vector<double> times;
    for (int rep = 0; rep < 11; ++rep) {
      (void)world->Barrier().Wait();
      auto t0 = std::chrono::steady_clock::now();
      (void)world->AllReduce(buf.data(), count, core::DType::kF32, parallel::ReduceOp::kSum).Wait();
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    if (world->rank() == 0) {
      std::printf("%d ranks, %3lld MiB: %8.2f ms, bus bandwidth %.2f GB/s\n", n,
                  static_cast<long long>(mib), 1e3 * t, 2.0 * (n - 1) / n * count * 4 / t / 1e9);
    }
  }
  world.reset();
  parallel::ShutdownCommunication();
  return 0;
}
