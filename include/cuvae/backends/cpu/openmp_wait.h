// How idle OpenMP threads wait: they spin for GOMP_SPINCOUNT=1000 PAUSEs (a
// few microseconds), then sleep, instead of libgomp's default 300,000 PAUSEs
// (milliseconds on Skylake and later). Set at start-up by the same restart as
// the BLAS kernel (blas_kernel.h): libgomp reads its environment once, when
// it is loaded.
//
// Why, measured on the 2-core Xeon of 2026-12-02 with nothing else running
// (tools/bench/bench_busy.sh, docs/results/2026-12-02-cpu/busy.md), steps at batch
// 20 and 200, idle / with one competing CPU-bound process:
//   libgomp's default (300,000)  0.97 / 13.5 ms     3.37 / 49.4 ms
//   GOMP_SPINCOUNT=1000          0.96 / 1.84 ms     3.54 / 8.36 ms
//   OMP_WAIT_POLICY=passive      2.03 / 1.18 ms     5.22 / 5.61 ms
// Spinning forever, a thread that waits at a barrier for a descheduled one
// spins away the time slice the other needs; sleeping at once, every one of
// a step's ~30 parallel regions pays a futex wake-up (the VM's costs tens of
// microseconds). A thousand PAUSEs cover the gap between two regions of a
// step and give the core back soon after.
//
// Environment: a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is always kept;
// CUVAE_OMP_WAIT=keep keeps libgomp's default.
#pragma once

#include <string>

namespace cuvae {

constexpr const char* kCuvaeSpinCount = "1000";

// The GOMP_SPINCOUNT to restart with, or "": none when the user set
// OMP_WAIT_POLICY or GOMP_SPINCOUNT, asked to keep libgomp's default
// (policy "keep"), or there is one thread (no barriers to wait at).
// Throws cuvae::Error unless policy is "", "auto" or "keep".
std::string openmp_spin_count_to_request(const std::string& omp_wait_policy,
                                          const std::string& gomp_spincount,
                                          const std::string& policy, int threads);

// For `vae info`: "GOMP_SPINCOUNT=1000 (set by cuvae ...)", ...
std::string openmp_wait_description();
// Records how the wait was set (called by the start-up code).
void set_openmp_wait_description(const std::string& text);

}  // namespace cuvae
