#include "core/evaluate.h"

#include <algorithm>
#include <vector>

namespace memtrain::core {

absl::StatusOr<float> EvaluateLoss(Engine& engine, DataLoader& loader, int max_batches) {
  const int B = loader.B(), T = loader.T();
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const Batch batch{inputs.data(), targets.data(), B, T};
  const int64_t n = std::min<int64_t>(max_batches, loader.num_batches());
  loader.Reset();
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    loader.Next(inputs.data(), targets.data());
    MT_RETURN_IF_ERROR(engine.Forward(batch, Pass::kEvalForward));
    sum += engine.Loss();
  }
  return n > 0 ? static_cast<float>(sum / n) : 0.0f;
}

}  // namespace memtrain::core
