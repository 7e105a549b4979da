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
  // Appends one line to the metrics file and flushes it. A failed write (disk full) is kept in
  // status(): the caller agrees on it over the ranks and stops; later lines are not written.
  void Json(const std::string& line);
  // The first error writing the metrics file (naming it), or OK.
  const absl::Status& status() const { return status_; }
  // Closes the metrics file; the first write, flush or close error.
  absl::Status Close();
  // A progress line; `keep` leaves it on screen (else a terminal redraws it in place).
  void Progress(const std::string& line, bool keep);
  void Line(const std::string& line);

 private:
  bool tty_ = false, quiet_ = true;
  std::FILE* metrics_ = nullptr;
  std::string path_;
  absl::Status status_;
};

// "h:mm:ss".
std::string Hms(double seconds);

// A JSON number with printf format `format` (e.g. "%.6g"), or null if `v` is NaN or infinite
// (JSON has no NaN), so every metrics line parses.
std::string JsonNumber(double v, const char* format = "%.9g");

}  // namespace memtrain::launcher

#endif  // MEMTRAIN_LAUNCHER_REPORTER_H_
