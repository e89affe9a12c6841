// Start-up choice of OpenBLAS's GEMM kernel from the CPU's features
// (decisions in cpu_features.h), and what the banner says about it.
//
// OpenBLAS reads OPENBLAS_CORETYPE once, when the library is loaded, which
// for a linked library is before main. So when the core it picked is below
// what the CPU supports, select_blas_kernel_at_startup() sets
// OPENBLAS_CORETYPE and re-executes the binary (/proc/self/exe, same
// arguments); an environment marker makes the restarted process keep
// whatever it gets, so it never loops.
//
// Environment:
//   OPENBLAS_CORETYPE=NAME   the user's choice: always kept, never overridden
//   CUVAE_BLAS_KERNEL=auto   (default) choose when OpenBLAS's pick is below the CPU
//   CUVAE_BLAS_KERNEL=keep   keep OpenBLAS's own pick
#pragma once

#include <string>
#include <vector>

#include "cuvae/backends/cpu/cpu_features.h"
#include "cuvae/backends/cpu/environment_check.h"

namespace cuvae {

// The environment's values that libgomp or OpenBLAS would ignore
// (environment_check.h), errors and warnings, each one line; a restarted
// process leaves out the warnings its first start printed. Call before
// select_blas_kernel_at_startup.
std::vector<EnvFinding> check_environment_at_startup();

// Call first in main, before any thread starts. Does nothing when oneDNN
// runs the GEMMs (cpu_gemm.h), since OpenBLAS's kernel then does not matter;
// also checks CUVAE_CPU_GEMM. May not return (exec);
// throws cuvae::Error on a bad CUVAE_BLAS_KERNEL
// or CUVAE_CPU_GEMM. If the exec fails, goes
// on with OpenBLAS's pick (the report's origin says why).
// With long_running (training, evaluation, benchmarks) the restart also sets
// GOMP_SPINCOUNT (openmp_wait.h), which alone is worth a restart (~0.1 s)
// only for commands that compute for a while.
void select_blas_kernel_at_startup(char** argv, bool long_running);

// The kernel in use, how it was chosen, and a warning if it is below the CPU.
BlasKernelReport current_blas_kernel();

}  // namespace cuvae
