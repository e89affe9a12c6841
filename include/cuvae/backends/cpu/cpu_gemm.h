// The CPU backend's SGEMM: OpenBLAS's cblas_sgemm (its kernel chosen from
// the CPU's features where its own detection falls back: blas_kernel.h), or
// oneDNN's dnnl_sgemm with CUVAE_CPU_GEMM=onednn in a build that found
// libdnnl-dev. oneDNN led on 1 thread and at large batches but lost at batch
// 20 with 2 threads (docs/results/2026-12-01-cpu/), and with Debian 12's
// oneDNN 2.6.3 a batch-100 training run corrupted the heap on the
// development Xeon (src/backends/cpu/cpu_gemm.cpp): opt-in until that is understood. Both
// run on the OpenMP pool's threads.
//
// In a build with libxsmm, its JIT kernels run every GEMM they take (all of
// the model's) in shape-fixed blocks (include/cuvae/backends/cpu/cpu_gemm_small.h) unless
// CUVAE_CPU_GEMM names a library.
//
// CUVAE_CPU_GEMM: auto (or unset) selects libxsmm, with OpenBLAS for what it
// declines; openblas OpenBLAS alone, onednn oneDNN alone.
#pragma once

#include <string>

#include "cuvae/backends/cpu/cpu_features.h"

namespace cuvae {

// Row-major C = alpha op(A) op(B) + beta C, as Backend::gemm.
void cpu_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
               int lda, const float* b, int ldb, float beta, float* c, int ldc);

// OpenBLAS's own cblas_sgemm on the pool's threads, whatever cpu_sgemm
// would choose: `vae bench` times the machine's large-SGEMM rate with it
// (libxsmm's blocks, made for the model's shapes, lose there on some CPUs).
void blas_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a, int lda,
                const float* b, int ldb, float beta, float* c, int ldc);

// Which library runs cpu_sgemm, its kernel, and how they were chosen; the
// banner's and `vae info`'s GEMM line.
BlasKernelReport cpu_gemm_kernel();

// Whether cpu_sgemm runs oneDNN (else OpenBLAS).
bool cpu_gemm_is_onednn();

// Whether cpu_sgemm runs libxsmm in shape-fixed blocks (cpu_gemm_small.h),
// whose bits do not depend on the thread count.
bool cpu_gemm_is_blocked();

// Which library runs which GEMMs, and why: `vae info`'s "GEMM shapes" line.
std::string cpu_gemm_shapes();

// Throws cuvae::Error naming CUVAE_CPU_GEMM if it is not auto, openblas or
// (in a oneDNN build) onednn. Called at start-up so that a bad value fails
// before any work.
void check_cpu_gemm_choice();

}  // namespace cuvae
