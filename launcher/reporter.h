// Rank 0's output for every training loop: a progress line (redrawn in place on a terminal) and
// JSON Lines metrics. Other ranks hold a closed reporter that prints nothing.
//
//   Reporter report;
//   MT_RETURN_IF_ERROR(report.Open(job.output().metrics(), /*resume_step=*/std::nullopt, quiet));
//   report.Json(R"({"step": 1, "loss": 3.2})");
//   report.Progress("step 1/100 | loss 3.2", /*keep=*/false);
#ifndef MEMTRAIN_LAUNCHER_REPORTER_H_
#define MEMTRAIN_LAUNCHER_REPORTER_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/status/status.h"

namespace memtrain::launcher {

class Reporter {
 public:
  Reporter() = default;
  Reporter(const Reporter&) = delete;
  Reporter& operator=(const Reporter&) = delete;
  ~Reporter();

  // Opens (creates or truncates) the metrics file at `path` (empty: no metrics). On resume the
  // file keeps the lines up to `resume_step` (an interrupted run may have logged steps after its
  // last checkpoint; those are trained again).
  absl::Status Open(const std::string& path, std::optional<int64_t> resume_step, bool quiet);
  void Json(const std::string& line);
  // A progress line; `keep` leaves it on screen (else a terminal redraws it in place).
  void Progress(const std::string& line, bool keep);
  void Line(const std::string& line);

 private:
  bool tty_ = false, quiet_ = true;
  std::FILE* metrics_ = nullptr;
};

// "h:mm:ss".
std::string Hms(double seconds);

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_REPORTER_H_
