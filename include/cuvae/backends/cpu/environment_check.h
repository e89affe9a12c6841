// The environment variables that set how the CPU backend computes (and
// CUVAE_PLOT_TIMEOUT), checked at start-up: a value libgomp, OpenBLAS or
// libxsmm would ignore (silently, or with a
// line of its own that says nothing of what runs instead) is named in one
// line of vae's. An error where what runs differs from what the value asks
// (it changes speed, or results), a warning where it makes no difference
// (an empty value, which the libraries treat as unset; a wait setting with
// one OpenMP thread; OPENBLAS_CORETYPE when oneDNN runs the GEMMs).
//
// Pure functions of the values (nullptr: unset), so that tests need not
// change a process's OPENBLAS_* (read once, when OpenBLAS is loaded).
#pragma once

#include <optional>
#include <string>

#include "cuvae/backends/cpu/cpu_features.h"

namespace cuvae {

struct EnvFinding {
  bool error = true;    // else a warning
  std::string message;  // one line, naming the variable and its value
};

// OMP_NUM_THREADS as libgomp reads it: positive decimal integers (an
// optional '+', blanks around), comma-separated for nested levels; and at
// most 64 threads per CPU (`cpus`: those this process may run on), beyond
// which libgomp failed to start them (40,000 on 2 CPUs) or crashed
// (70,000). `threads`: what runs (omp_get_max_threads()).
std::optional<EnvFinding> check_omp_num_threads(const char* value, int threads, int cpus);
constexpr int kMaxThreadsPerCpu = 64;
// OMP_DYNAMIC: true or false; OMP_PROC_BIND: true, false, or a
// comma-separated list of master, primary, close, spread (any case, blanks
// around). Both change how many threads run, or where.
std::optional<EnvFinding> check_omp_dynamic(const char* value);
std::optional<EnvFinding> check_omp_proc_bind(const char* value);
// GOMP_SPINCOUNT: decimal digits with an optional k, M, G or T suffix, or
// infinite / infinity (libgomp's forms); a '-', which libgomp wraps to a
// spin of ~2^64 (forever), is refused too.
std::optional<EnvFinding> check_gomp_spincount(const char* value, int threads);
// OMP_WAIT_POLICY: active or passive (any case, blanks around).
std::optional<EnvFinding> check_omp_wait_policy(const char* value, int threads);
// OPENBLAS_CORETYPE against the core OpenBLAS loaded (openblas_get_corename()):
// a name it does not know, or cannot run here, leaves it on another core
// without a word. `openblas_computes`: false when oneDNN runs the GEMMs.
std::optional<EnvFinding> check_openblas_coretype(const char* value, const std::string& loaded_core,
                                                  bool openblas_computes);
// LIBXSMM_TARGET: one of libxsmm's target names (generic, sse3, wsm, snb,
// avx, hsw, avx2, skx, avx512, clx, cpx, spr, ...: case matters) or a
// number; anything else libxsmm ignores without a word and JITs for
// `loaded_target`. A target the CPU cannot run (above its vector ISA,
// or knl/knm without the Xeon Phi extensions) is an error too: libxsmm
// does not check, and its code dies of SIGILL (knm on a Zen 5). 
// `libxsmm_computes`: false when it runs no GEMM.
std::optional<EnvFinding> check_libxsmm_target(const char* value, const std::string& loaded_target,
                                               bool libxsmm_computes, const CpuFeatures& cpu);
// CUVAE_PLOT_TIMEOUT: whole seconds from 1 to 3600 (else charts.cpp uses 120).
std::optional<EnvFinding> check_plot_timeout(const char* value);

}  // namespace cuvae
