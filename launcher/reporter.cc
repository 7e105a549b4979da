#include "launcher/reporter.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"

namespace memtrain::launcher {

std::string Hms(double seconds) {
  if (!std::isfinite(seconds)) return "-:--:--";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
}

std::string JsonNumber(double v, const char* format) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

absl::Status Reporter::Open(const std::string& path, std::optional<int64_t> resume_step,
                            bool quiet) {
  tty_ = isatty(fileno(stdout));
  quiet_ = quiet;
  if (path.empty()) return absl::OkStatus();
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  std::string kept;
  if (resume_step) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      int64_t step = 0;
      const size_t at = line.find("\"step\": ");
      if (at != std::string::npos &&
          absl::SimpleAtoi(line.substr(at + 8, line.find_first_of(",}", at) - at - 8), &step) &&
          step > *resume_step) {
        continue;
      }
      kept += line + "\n";
    }
  }
  path_ = path;
  if (resume_step) {
    // The lines kept up to the checkpoint replace the file atomically: a kill or a full disk at
    // any moment leaves either the old file or the complete new one, never an empty one.
    absl::Status rewritten = core::WriteFileAtomically(
        path, [&](std::FILE* f) { return core::WriteAll(f, kept.data(), kept.size(), path); });
    if (!rewritten.ok()) {
      status_ = absl::UnavailableError(
          absl::StrFormat("output.metrics = \"%s\": cannot rewrite it for the resumed run: %s",
                          path, rewritten.message()));
      return status_;
    }
  }
  metrics_ = std::fopen(path.c_str(), resume_step ? "a" : "w");
  if (metrics_ == nullptr) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "output.metrics = \"%s\": cannot open it for writing: %s", path, std::strerror(errno)));
  }
  return absl::OkStatus();
}

Reporter::~Reporter() {
  if (metrics_) std::fclose(metrics_);
}

void Reporter::Json(const std::string& line) {
  if (metrics_ == nullptr || !status_.ok()) return;
  if (std::fprintf(metrics_, "%s\n", line.c_str()) < 0 || std::fflush(metrics_) != 0) {
    status_ = absl::UnavailableError(absl::StrFormat(
        "output.metrics = \"%s\": write failed: %s (disk full?)", path_, std::strerror(errno)));
  }
}

absl::Status Reporter::Close() {
  if (metrics_ != nullptr) {
    if (std::fclose(metrics_) != 0 && status_.ok()) {
      status_ = absl::UnavailableError(absl::StrFormat("output.metrics = \"%s\": close failed: %s",
                                                       path_, std::strerror(errno)));
    }
    metrics_ = nullptr;
  }
  return status_;
}

void Reporter::Progress(const std::string& line, bool keep) {
  if (quiet_) return;
  if (tty_) {
    std::printf("\r\x1b[K%s%s", line.c_str(), keep ? "\n" : "");
  } else if (keep) {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

void Reporter::Line(const std::string& line) {
  if (quiet_) return;
  std::printf("%s%s\n", tty_ ? "\r\x1b[K" : "", line.c_str());
  std::fflush(stdout);
}

}  // namespace memtrain::launcher
