// OpenBLAS kernel selection at start-up (include/cuvae/backends/cpu/blas_kernel.h).
#include "cuvae/backends/cpu/blas_kernel.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/cpu_gemm.h"
#include "cuvae/backends/cpu/cpu_gemm_small.h"
#include "cuvae/backends/cpu/environment_check.h"
#include "cuvae/backends/cpu/openmp_wait.h"
#include "cuvae/backends/cpu/thread_tuner.h"
#include "cuvae/error.h"

extern "C" char* openblas_get_corename(void);

namespace cuvae {

namespace {

// Set in the restarted process's environment: that it was restarted (its
// value is the process id, which exec keeps: a marker inherited from another
// process's environment never matches, so it is ignored, not trusted), the
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

// What the restart (if this process is one) told it; the markers are then
// removed, so that a process this one starts decides for itself.
struct RestartMarkers {
  bool restarted = false;
  std::string core_from;  // the core OpenBLAS had picked before the restart replaced it
  bool wait_set = false;  // the restart set GOMP_SPINCOUNT
};
RestartMarkers take_restart_markers() {
  RestartMarkers m;
  m.restarted = env_or_empty(kRestarted) == std::to_string(::getpid());
  if (m.restarted) {
    m.core_from = env_or_empty(kRestartMarker);
    m.wait_set = env_or_empty(kWaitMarker) == "1";
  }
  for (const char* name : {kRestarted, kRestartMarker, kWaitMarker}) unsetenv(name);
  return m;
}

// CUVAE_BLAS_KERNEL, checked.
BlasKernelRequest blas_kernel_request(const std::string& coretype) {
  BlasKernelRequest request;
  const std::string policy = env_or_empty("CUVAE_BLAS_KERNEL");
  if (!policy.empty()) request.policy = policy;
  if (request.policy != "auto" && request.policy != "keep") {
    throw Error("CUVAE_BLAS_KERNEL must be auto or keep, got '" + policy + "'");
  }
  request.user_override = !coretype.empty();
  return request;
}

}  // namespace

std::vector<EnvFinding> check_environment_at_startup() {
  // The markers are peeked at here; select_blas_kernel_at_startup takes them.
  const bool restarted = env_or_empty(kRestarted) == std::to_string(::getpid());
  const bool core_by_cuvae = restarted && !env_or_empty(kRestartMarker).empty();
  const bool spin_by_cuvae = restarted && env_or_empty(kWaitMarker) == "1";
  const int threads = omp_get_max_threads();
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  const int cpus = sched_getaffinity(0, sizeof allowed, &allowed) == 0
                       ? CPU_COUNT(&allowed)
                       : static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  // "libxsmm 1.17 (JIT for cpx)": the target it JITs for.
  const std::string library = small_sgemm_library();
  const size_t jit = library.find("(JIT for ");
  const std::string target = jit == std::string::npos ? "" : library.substr(jit + 9, library.size() - jit - 10);
  std::vector<EnvFinding> findings;
  for (const std::optional<EnvFinding>& finding :
       {check_omp_num_threads(std::getenv("OMP_NUM_THREADS"), threads, cpus),
        check_omp_dynamic(std::getenv("OMP_DYNAMIC")), check_omp_proc_bind(std::getenv("OMP_PROC_BIND")),
        check_omp_wait_policy(std::getenv("OMP_WAIT_POLICY"), threads),
        target.empty() ? std::nullopt
                       : check_libxsmm_target(std::getenv("LIBXSMM_TARGET"), target, cpu_gemm_is_blocked(),
                                              detect_cpu_features()),
        check_plot_timeout(std::getenv("CUVAE_PLOT_TIMEOUT")),
        spin_by_cuvae ? std::nullopt : check_gomp_spincount(std::getenv("GOMP_SPINCOUNT"), threads),
        core_by_cuvae ? std::nullopt
                      : check_openblas_coretype(std::getenv("OPENBLAS_CORETYPE"), openblas_get_corename(),
                                                !cpu_gemm_is_onednn())}) {
    // A restarted process's warnings were printed by the process before it.
    if (finding && (finding->error || !restarted)) findings.push_back(*finding);
  }
  return findings;
}

void select_blas_kernel_at_startup(char** argv, bool long_running) {
  const RestartMarkers markers = take_restart_markers();
  // Every value is checked in the restarted process too: nothing is trusted
  // because a marker says it was checked.
  check_cpu_gemm_choice();
  adaptive_threads_requested();
  // The environment's OPENBLAS_CORETYPE, unless cuvae's restart set it.
  const std::string coretype = markers.core_from.empty() ? env_or_empty("OPENBLAS_CORETYPE") : "";
  const BlasKernelRequest request = blas_kernel_request(coretype);
  g_origin = openblas_kernel_origin(coretype, markers.core_from, env_or_empty("CUVAE_BLAS_KERNEL"));
  if (cpu_gemm_is_onednn()) g_origin += "; oneDNN runs the GEMMs";
  if (!markers.core_from.empty()) unsetenv("OPENBLAS_CORETYPE");

  const std::string user_wait = env_or_empty("OMP_WAIT_POLICY");
  const std::string user_spin = markers.wait_set ? "" : env_or_empty("GOMP_SPINCOUNT");
  const std::string wait = openmp_spin_count_to_request(user_wait, user_spin, env_or_empty("CUVAE_OMP_WAIT"),
                                                         omp_get_max_threads());
  if (markers.wait_set) {
    set_openmp_wait_description(std::string("GOMP_SPINCOUNT=") + env_or_empty("GOMP_SPINCOUNT") +
                                " (set by cuvae; CUVAE_OMP_WAIT=keep keeps libgomp's default)");
    unsetenv("GOMP_SPINCOUNT");
  } else if (!user_wait.empty() || !user_spin.empty()) {
    set_openmp_wait_description((user_wait.empty() ? "GOMP_SPINCOUNT=" + user_spin : "OMP_WAIT_POLICY=" + user_wait) +
                                " set in the environment");
  }
  if (markers.restarted) return;

  const std::string core = cpu_gemm_is_onednn() ? ""
                           : openblas_core_to_request(detect_cpu_features(), openblas_get_corename(), request);
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
  // Empty values are unset values to libgomp, which says "Invalid value"
  // of each at every start: once is enough.
  for (const char* name : {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DYNAMIC", "OMP_PROC_BIND"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[strspn(value, " \t\n\v\f\r")] == '\0') unsetenv(name);
  }
  setenv(kRestarted, std::to_string(::getpid()).c_str(), 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  // Only reached if the exec failed: go on as loaded.
  if (!core.empty()) {
    g_origin += " (restarting with OPENBLAS_CORETYPE=" + core + " failed: " + std::strerror(errno) + ")";
    unsetenv("OPENBLAS_CORETYPE");
  }
  if (restart_for_wait) unsetenv("GOMP_SPINCOUNT");
  for (const char* name : {kRestarted, kRestartMarker, kWaitMarker}) unsetenv(name);
}

BlasKernelReport current_blas_kernel() {
  return assess_blas_kernel(detect_cpu_features(), openblas_get_corename(), g_origin);
}

}  // namespace cuvae
