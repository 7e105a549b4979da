#include "core/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace memtrain::core {

absl::StatusOr<int64_t> FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrFormat("cannot open %s: %s; check the path", path, std::strerror(errno)));
  }
  return static_cast<int64_t>(st.st_size);
}

absl::Status ReadAll(std::FILE* f, void* data, size_t bytes, const std::string& path) {
  if (bytes > 0 && std::fread(data, 1, bytes, f) != bytes) {
    return absl::DataLossError(
        absl::StrFormat("%s: unexpected end of file or read error reading %d bytes", path, bytes));
  }
  return absl::OkStatus();
}

absl::Status WriteAll(std::FILE* f, const void* data, size_t bytes, const std::string& path) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, f) != bytes) {
    return absl::UnavailableError(
        absl::StrFormat("%s: write failed: %s (disk full?)", path, std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::function<absl::Status(std::FILE*)>& write) {
  const std::string tmp = absl::StrFormat("%s.tmp.%d", path, getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrFormat("cannot create %s: %s; check that the folder exists and is writable", tmp,
                        std::strerror(errno)));
  }
  absl::Status s = write(f);
  if (s.ok() && std::fflush(f) != 0)
    s = absl::UnavailableError(absl::StrCat("flush failed: ", tmp));
  if (s.ok() && fsync(fileno(f)) != 0)
    s = absl::UnavailableError(absl::StrCat("fsync failed: ", tmp));
  if (std::fclose(f) != 0 && s.ok())
    s = absl::UnavailableError(absl::StrCat("close failed: ", tmp));
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::UnavailableError(
        absl::StrFormat("rename %s -> %s failed: %s", tmp, path, std::strerror(errno)));
  }
  if (!s.ok()) {
    std::remove(tmp.c_str());
    return s;
  }
  // Persist the rename itself.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

}  // namespace memtrain::core
