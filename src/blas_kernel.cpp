// OpenBLAS kernel selection at start-up (include/cuvae/blas_kernel.h).
#include "cuvae/blas_kernel.h"

#include <omp.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cuvae/cpu_gemm.h"
#include "cuvae/error.h"
#include "cuvae/openmp_wait.h"

extern "C" char* openblas_get_corename(void);

namespace cuvae {

namespace {

// Set in the restarted process's environment: that it was restarted, the
// core OpenBLAS had picked (if the restart changed it), and whether the
// restart set GOMP_SPINCOUNT.
constexpr const char* kRestarted = "CUVAE_RESTARTED";
constexpr const char* kRestartMarker = "CUVAE_BLAS_RESTARTED_FROM";
constexpr const char* kWaitMarker = "CUVAE_WAIT_SET";

// How the core in use was chosen, for the banner; set once at start-up.
std::string g_origin = "OpenBLAS's own choice";

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// The OPENBLAS_CORETYPE to restart with, or "" (and sets g_origin).
std::string openblas_core_wanted() {
  BlasKernelRequest request;
  const std::string policy = env_or_empty("CUVAE_BLAS_KERNEL");
  if (!policy.empty()) request.policy = policy;
  if (request.policy != "auto" && request.policy != "keep") {
    throw Error("CUVAE_BLAS_KERNEL must be auto or keep, got '" + policy + "'");
  }
  if (cpu_gemm_is_onednn()) {
    g_origin = "OpenBLAS's own choice; oneDNN runs the GEMMs";
    return "";
  }
  const std::string user_core = env_or_empty("OPENBLAS_CORETYPE");
  request.user_override = !user_core.empty() && env_or_empty("CUVAE_TEST_OPENBLAS_FALLBACK") != "1";
  if (request.policy == "keep") g_origin = "OpenBLAS's own choice, kept (CUVAE_BLAS_KERNEL=keep)";
  if (request.user_override) g_origin = "OPENBLAS_CORETYPE=" + user_core + " set by the user";
  return openblas_core_to_request(detect_cpu_features(), openblas_get_corename(), request);
}

// In a restarted process: records what the restart set, and passes none of
// it on (a process this one starts decides for itself).
void note_restart() {
  const std::string core_from = env_or_empty(kRestartMarker);
  if (!core_from.empty()) {
    g_origin = "chosen by cuvae from the CPU's features; OpenBLAS had picked " + core_from;
    unsetenv("OPENBLAS_CORETYPE");
  }
  if (env_or_empty(kWaitMarker) == "1") {
    set_openmp_wait_description(std::string("GOMP_SPINCOUNT=") + env_or_empty("GOMP_SPINCOUNT") +
                                " (set by cuvae; CUVAE_OMP_WAIT=keep keeps libgomp's default)");
    unsetenv("GOMP_SPINCOUNT");
  }
  unsetenv(kRestartMarker);
  unsetenv(kWaitMarker);
  unsetenv(kRestarted);
}

}  // namespace

void select_blas_kernel_at_startup(char** argv, bool long_running) {
  if (env_or_empty(kRestarted) == "1") {
    note_restart();
    return;
  }
  check_cpu_gemm_choice();
  const std::string core = openblas_core_wanted();
  const std::string user_wait = env_or_empty("OMP_WAIT_POLICY"), user_spin = env_or_empty("GOMP_SPINCOUNT");
  const std::string wait = openmp_spin_count_to_request(user_wait, user_spin, env_or_empty("CUVAE_OMP_WAIT"),
                                                         omp_get_max_threads());
  if (!user_wait.empty() || !user_spin.empty()) {
    set_openmp_wait_description((user_wait.empty() ? "GOMP_SPINCOUNT=" + user_spin : "OMP_WAIT_POLICY=" + user_wait) +
                                " set by the user");
  }
  const bool restart_for_wait = !wait.empty() && long_running;
  if (!wait.empty() && !long_running) {
    set_openmp_wait_description("libgomp's default in this command; train, eval and bench run with GOMP_SPINCOUNT=" +
                                wait + " (CUVAE_OMP_WAIT=keep: libgomp's default)");
  }
  if (core.empty() && !restart_for_wait) return;
  if (!core.empty()) {
    setenv(kRestartMarker, openblas_get_corename(), 1);
    setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  }
  if (restart_for_wait) {
    setenv(kWaitMarker, "1", 1);
    setenv("GOMP_SPINCOUNT", wait.c_str(), 1);
  }
  setenv(kRestarted, "1", 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  // Only reached if the exec failed: go on as loaded.
  if (!core.empty()) {
    g_origin = "OpenBLAS's own choice (restarting with OPENBLAS_CORETYPE=" + core +
               " failed: " + std::strerror(errno) + ")";
    unsetenv("OPENBLAS_CORETYPE");
  }
  if (restart_for_wait) unsetenv("GOMP_SPINCOUNT");
  unsetenv(kRestartMarker);
  unsetenv(kWaitMarker);
  unsetenv(kRestarted);
}

BlasKernelReport current_blas_kernel() {
  return assess_blas_kernel(detect_cpu_features(), openblas_get_corename(), g_origin);
}

}  // namespace cuvae
