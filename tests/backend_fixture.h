// Helpers for tests that run on every backend: the list of backends to run
// ("cpu" always, "cuda" where compiled in and a device is present; otherwise
// the CUDA cases skip with the reason), and an error measure that reports
// the largest error as a fraction of its tolerance.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae::testing {

// Makes the named backend, or skips the current test saying why not.
inline std::unique_ptr<Backend> backend_or_skip(const std::string& name) {
  if (name == "cuda") {
    std::string why_not;
    if (!cuda_available(&why_not)) return nullptr;
  }
  return make_backend(name);
}

#define CUVAE_BACKEND_OR_SKIP(var, name)                                  \
  std::unique_ptr<::cuvae::Backend> var = ::cuvae::testing::backend_or_skip(name); \
  if (!var) {                                                             \
    std::string why_not_;                                                 \
    ::cuvae::cuda_available(&why_not_);                                   \
    GTEST_SKIP() << "CUDA test skipped: " << why_not_;                    \
  }

// Checks |actual - expected| <= abs + rel |expected| elementwise; reports the
// largest error as a fraction of its tolerance (1.0 = at the limit).
inline double expect_all_close(const std::vector<float>& actual, const std::vector<double>& expected,
                               double rel, double abs, const std::string& what) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  double worst = 0.0;
  size_t worst_index = 0;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    const double tolerance = abs + rel * std::fabs(expected[i]);
    const double error = std::fabs(actual[i] - expected[i]);
    // tolerance 0 asks for equality
    const double fraction = !std::isfinite(actual[i]) && actual[i] != expected[i] ? INFINITY
                            : tolerance > 0                                      ? error / tolerance
                            : error == 0                                         ? 0.0
                                                                                 : INFINITY;
    if (!(fraction <= worst)) {
      worst = fraction;
      worst_index = i;
    }
  }
  EXPECT_LE(worst, 1.0) << what << ": element " << worst_index << " is "
                        << actual[worst_index] << ", expected " << expected[worst_index];
  std::printf("  %-40s worst error %.3f of tolerance\n", what.c_str(), worst);
  return worst;
}

}  // namespace cuvae::testing
