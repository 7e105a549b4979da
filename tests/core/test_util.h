// Helpers for kernel tests: random inputs, central finite differences in double, and a normwise
// closeness check (max |actual - expected| <= rtol * max |expected| + atol).
#ifndef MEMTRAIN_TESTS_CORE_TEST_UTIL_H_
#define MEMTRAIN_TESTS_CORE_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace memtrain::testing {

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// d f / d x by central differences, in double.
inline std::vector<double> NumericalGrad(const std::function<double(const std::vector<double>&)>& f,
                                         std::vector<double> x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double fp = f(x);
    x[i] = saved - h;
    const double fm = f(x);
    x[i] = saved;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

template <typename A, typename E>
::testing::AssertionResult AllClose(const A& actual, const E& expected, double rtol,
                                    double atol = 0.0) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " vs expected " << expected.size();
  }
  double max_ref = 0.0, max_err = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(expected[i])));
    const double err = std::abs(static_cast<double>(actual[i]) - static_cast<double>(expected[i]));
    if (!(err <= max_err)) {  // also catches NaN
      max_err = std::isnan(err) ? INFINITY : err;
      worst = i;
    }
  }
  const double tol = rtol * max_ref + atol;
  if (max_err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max abs error " << max_err << " at index " << worst << " (actual " << actual[worst]
         << ", expected " << expected[worst] << ") exceeds " << tol << " = " << rtol
         << " * max|expected| (" << max_ref << ") + " << atol;
}

}  // namespace memtrain::testing

#endif  // MEMTRAIN_TESTS_CORE_TEST_UTIL_H_
