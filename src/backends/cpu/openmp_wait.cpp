// The OpenMP spin decision (include/cuvae/backends/cpu/openmp_wait.h).
#include "cuvae/backends/cpu/openmp_wait.h"

#include "cuvae/error.h"

namespace cuvae {

namespace {
std::string g_description = "libgomp's default";
}  // namespace

std::string openmp_spin_count_to_request(const std::string& omp_wait_policy,
                                          const std::string& gomp_spincount,
                                          const std::string& policy, int threads) {
  if (!policy.empty() && policy != "auto" && policy != "keep") {
    throw Error("CUVAE_OMP_WAIT must be auto or keep, got '" + policy + "'");
  }
  if (policy == "keep" || !omp_wait_policy.empty() || !gomp_spincount.empty() || threads < 2) return "";
  return kCuvaeSpinCount;
}

std::string openmp_wait_description() { return g_description; }
void set_openmp_wait_description(const std::string& text) { g_description = text; }

}  // namespace cuvae
