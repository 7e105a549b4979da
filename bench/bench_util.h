// Helpers the benchmark programs share: the process's peak RSS and running a configuration in a
// child process of its own (so that each has its own peak RSS), its result sent back through a
// pipe.
#ifndef MEMTRAIN_BENCH_BENCH_UTIL_H_
#define MEMTRAIN_BENCH_BENCH_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <type_traits>

namespace memtrain::bench {

// VmHWM of /proc/self/status in KiB (-1 if unknown).
inline int64_t PeakRssKib() {
  std::ifstream f("/proc/self/status");
  std::string key;
  int64_t v = 0;
  while (f >> key) {
    if (key == "VmHWM:") {
      f >> v;
      return v;
    }
    f.ignore(1 << 20, '\n');
  }
  return -1;
}

// Runs fn() in a forked child and returns its result (a trivially copyable struct with an `ok`
// member, which is 0 when the child died or sent nothing).
template <typename Result, typename Fn>
Result RunInChild(Fn fn) {
  static_assert(std::is_trivially_copyable_v<Result>);
  int fds[2];
  if (pipe(fds) != 0) return Result{};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const Result r = fn();
    (void)!write(fds[1], &r, sizeof(r));
    _exit(0);
  }
  close(fds[1]);
  Result r{};
  if (read(fds[0], &r, sizeof(r)) != static_cast<ssize_t>(sizeof(r))) r = Result{};
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return r;
}

}  // namespace memtrain::bench

#endif  // MEMTRAIN_BENCH_BENCH_UTIL_H_
