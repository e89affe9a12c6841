// How idle OpenMP threads wait: OMP_WAIT_POLICY=passive (sleep at once)
// instead of libgomp's default (spin up to 300,000 PAUSEs, milliseconds on
// Skylake and later, before sleeping), set at start-up by the same restart
// as the BLAS kernel (blas_kernel.h): libgomp reads its environment once,
// when it is loaded.
//
// Why: with one other busy process on a 2-core machine, a thread that waits
// at a barrier for a descheduled one spins away the time slice the other
// needs: a step at batch 200 ran 8-20x slower than with passive waiting
// (tools/bench_busy.sh, docs/results/2026-12-01-cpu/busy.md). Measured on a
// shared 2-core VM, passive waiting was also the fastest when no competitor
// was started, ahead of GOMP_SPINCOUNT=100 and 1000 (the VM was never truly
// idle: other builds ran, load average 1-6).
//
// Environment: a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is always kept;
// CUVAE_OMP_WAIT=keep keeps libgomp's default.
#pragma once

#include <string>

namespace cuvae {

constexpr const char* kCuvaeWaitPolicy = "passive";

// The OMP_WAIT_POLICY to restart with, or "": none when the user set
// OMP_WAIT_POLICY or GOMP_SPINCOUNT, asked to keep libgomp's default
// (policy "keep"), or there is one thread (no barriers to wait at).
// Throws cuvae::Error unless policy is "", "auto" or "keep".
std::string openmp_wait_policy_to_request(const std::string& omp_wait_policy,
                                          const std::string& gomp_spincount,
                                          const std::string& policy, int threads);

// For `vae info`: "OMP_WAIT_POLICY=passive (set by cuvae ...)", ...
std::string openmp_wait_description();
// Records how the wait was set (called by the start-up code).
void set_openmp_wait_description(const std::string& text);

}  // namespace cuvae
