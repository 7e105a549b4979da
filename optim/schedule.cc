#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace memtrain::optim {

float LrSchedule::At(int64_t step) const {
  if (step < warmup_steps) return peak * static_cast<float>(step + 1) / warmup_steps;
  if (decay == Decay::kConstant) return peak;
  const int64_t span = std::max<int64_t>(1, total_steps - 1 - warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / span);
  const double floor = static_cast<double>(min_ratio) * peak;
  const double shape =
      decay == Decay::kCosine ? 0.5 * (1.0 + std::cos(M_PI * progress)) : 1.0 - progress;
  return static_cast<float>(floor + (peak - floor) * shape);
}

}  // namespace memtrain::optim
