// Learning-rate schedules: linear warm-up (peak * (step + 1) / warmup_steps, as llm.c), then
// constant, cosine or linear decay to min_ratio * peak at total_steps.
//
//   optim::LrSchedule s{.peak = 3e-4f, .warmup_steps = 100, .total_steps = 5000,
//                       .decay = optim::Decay::kCosine, .min_ratio = 0.1f};
//   float lr = s.At(step);   // step is 0-based
#ifndef MEMTRAIN_OPTIM_SCHEDULE_H_
#define MEMTRAIN_OPTIM_SCHEDULE_H_

#include <cstdint>

namespace memtrain::optim {

enum class Decay { kConstant, kCosine, kLinear };

struct LrSchedule {
  float peak = 1e-3f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  Decay decay = Decay::kConstant;
  float min_ratio = 0.0f;

  float At(int64_t step) const;
};

}  // namespace memtrain::optim

#endif  // MEMTRAIN_OPTIM_SCHEDULE_H_
