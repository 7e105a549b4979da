// Range checks shared by the optimizers' config validation (internal to optim/). Messages name
// the C++ field ("AdamWConfig::lr = -1: must be >= 0 and finite; ..."); the launcher maps the
// names to job-spec paths (launcher/field_names.h), so both read the same.
#ifndef MEMTRAIN_OPTIM_CHECK_H_
#define MEMTRAIN_OPTIM_CHECK_H_

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace memtrain::optim::internal {

inline absl::Status BadField(const char* field, float v, const char* rule, const char* hint) {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s = %s: %s; %s", field, absl::StrCat(v), rule, hint));
}

// Finite and >= 0 (a weight decay).
inline absl::Status NonNegative(const char* field, float v, const char* hint) {
  if (std::isfinite(v) && v >= 0) return absl::OkStatus();
  return BadField(field, v, "must be >= 0 and finite", hint);
}

// Finite and > 0 (a config's learning rate, eps, tau).
inline absl::Status Positive(const char* field, float v, const char* hint) {
  if (std::isfinite(v) && v > 0) return absl::OkStatus();
  return BadField(field, v, "must be > 0 and finite", hint);
}

// In [0, 1) (betas, momentum, dampening).
inline absl::Status UnitInterval(const char* field, float v, const char* hint) {
  if (v >= 0 && v < 1) return absl::OkStatus();
  return BadField(field, v, "must be in [0, 1)", hint);
}

}  // namespace memtrain::optim::internal

#endif  // MEMTRAIN_OPTIM_CHECK_H_
