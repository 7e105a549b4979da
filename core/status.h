// Status helpers shared by every module: early-return macros over absl::Status and a CHECK that
// aborts with a message for internal invariants (never for user input).
//
//   absl::StatusOr<TokenFile> f = TokenFile::Open(path);
//   MT_ASSIGN_OR_RETURN(TokenFile tokens, TokenFile::Open(path));
//   MT_RETURN_IF_ERROR(model.LoadLlmc(path));
//   MT_CHECK(n % 4 == 0) << "n must be a multiple of 4, got " << n;
#ifndef MEMTRAIN_CORE_STATUS_H_
#define MEMTRAIN_CORE_STATUS_H_

#include <cstdlib>
#include <iostream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MT_CONCAT_INNER_(a, b) a##b
#define MT_CONCAT_(a, b) MT_CONCAT_INNER_(a, b)

#define MT_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status mt_status_ = (expr);      \
    if (!mt_status_.ok()) return mt_status_; \
  } while (0)

#define MT_ASSIGN_OR_RETURN(lhs, expr) \
  MT_ASSIGN_OR_RETURN_IMPL_(MT_CONCAT_(mt_statusor_, __LINE__), lhs, expr)
#define MT_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                              \
  if (!var.ok()) return std::move(var).status();  \
  lhs = std::move(var).value()

namespace memtrain::core {

// Streams a message, then aborts when destroyed. Used only through MT_CHECK.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    stream_ << file << ":" << line << ": memtrain internal check failed: " << cond << " ";
  }
  [[noreturn]] ~CheckFailure() {
    std::cerr << stream_.str() << std::endl;
    std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

}  // namespace memtrain::core

#define MT_CHECK(cond) \
  if (cond) {          \
  } else               \
    ::memtrain::core::CheckFailure(__FILE__, __LINE__, #cond).stream()

// Aborts with the status message when `expr` is not OK. For examples and tools only.
#define MT_CHECK_OK(expr)                     \
  do {                                        \
    ::absl::Status mt_s_ = (expr);            \
    MT_CHECK(mt_s_.ok()) << mt_s_.ToString(); \
  } while (0)

#endif  // MEMTRAIN_CORE_STATUS_H_
