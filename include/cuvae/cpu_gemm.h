// The CPU backend's SGEMM: oneDNN's dnnl_sgemm when the build found
// libdnnl-dev, else OpenBLAS's cblas_sgemm. oneDNN won on every GEMM shape
// of the model, on 1 and 2 threads (docs/results/2026-12-01-cpu/), most at
// small batches (1.85x at batch 20); it picks its kernels from the CPU's
// features, not from a table of CPU models, so it never falls back to SSE on
// a CPU newer than the library. Both run on the OpenMP pool's threads.
//
// CUVAE_CPU_GEMM=openblas selects OpenBLAS in a oneDNN build (to compare, or
// to avoid oneDNN); "auto" (or unset) is the default, the best one built in.
#pragma once

#include <string>

#include "cuvae/cpu_features.h"

namespace cuvae {

// Row-major C = alpha op(A) op(B) + beta C, as Backend::gemm.
void cpu_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
               int lda, const float* b, int ldb, float beta, float* c, int ldc);

// Which library runs cpu_sgemm, its kernel, and how they were chosen; the
// banner's and `vae info`'s GEMM line.
BlasKernelReport cpu_gemm_kernel();

// Whether cpu_sgemm runs oneDNN (else OpenBLAS).
bool cpu_gemm_is_onednn();

// "vae: warning: ..." on stderr when the GEMM kernel in use is below what
// the CPU supports; else nothing.
void print_cpu_gemm_warning();

// Throws cuvae::Error naming CUVAE_CPU_GEMM if it is not auto, openblas or
// (in a oneDNN build) onednn. Called at start-up so that a bad value fails
// before any work.
void check_cpu_gemm_choice();

}  // namespace cuvae
