// OpenBLAS kernel selection at start-up (include/cuvae/blas_kernel.h).
#include "cuvae/blas_kernel.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuvae/cpu_gemm.h"
#include "cuvae/error.h"

extern "C" char* openblas_get_corename(void);

namespace cuvae {

namespace {

// Set in the restarted process's environment: the core OpenBLAS had picked.
constexpr const char* kRestartMarker = "CUVAE_BLAS_RESTARTED_FROM";

// How the core in use was chosen, for the banner; set once at start-up.
std::string g_origin = "OpenBLAS's own choice";

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

}  // namespace

void select_blas_kernel_at_startup(char** argv) {
  const std::string restarted_from = env_or_empty(kRestartMarker);
  if (!restarted_from.empty()) {
    g_origin = "chosen by cuvae from the CPU's features; OpenBLAS had picked " + restarted_from;
    // Not passed on: a process this one starts decides for itself.
    unsetenv(kRestartMarker);
    unsetenv("OPENBLAS_CORETYPE");
    return;
  }
  check_cpu_gemm_choice();
  BlasKernelRequest request;
  const std::string policy = env_or_empty("CUVAE_BLAS_KERNEL");
  if (!policy.empty()) request.policy = policy;
  if (request.policy != "auto" && request.policy != "keep") {
    throw Error("CUVAE_BLAS_KERNEL must be auto or keep, got '" + policy + "'");
  }
  if (cpu_gemm_is_onednn()) {
    g_origin = "OpenBLAS's own choice; oneDNN runs the GEMMs";
    return;
  }
  const std::string user_core = env_or_empty("OPENBLAS_CORETYPE");
  request.user_override = !user_core.empty() && env_or_empty("CUVAE_TEST_OPENBLAS_FALLBACK") != "1";
  if (request.policy == "keep") g_origin = "OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep)";
  if (request.user_override) g_origin = "OPENBLAS_CORETYPE=" + user_core + " set by the user";
  const std::string loaded = openblas_get_corename();
  const std::string wanted = openblas_core_to_request(detect_cpu_features(), loaded, request);
  if (wanted.empty()) return;
  setenv("OPENBLAS_CORETYPE", wanted.c_str(), 1);
  setenv(kRestartMarker, loaded.c_str(), 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  // Only reached if the exec failed: go on with what is loaded.
  g_origin = "OpenBLAS's own choice (restarting with OPENBLAS_CORETYPE=" + wanted +
             " failed: " + std::strerror(errno) + ")";
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv(kRestartMarker);
}

BlasKernelReport current_blas_kernel() {
  return assess_blas_kernel(detect_cpu_features(), openblas_get_corename(), g_origin);
}

}  // namespace cuvae
