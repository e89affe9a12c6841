// How idle OpenMP threads wait: they spin for GOMP_SPINCOUNT=1000 PAUSEs (a
// few microseconds), then sleep, instead of libgomp's default 300,000 PAUSEs
// (milliseconds on Skylake and later). Set at start-up by the same restart as
// the BLAS kernel (blas_kernel.h): libgomp reads its environment once, when
// it is loaded.
//
// Why, measured on the 2-core Xeon of 2026-12-02 with nothing else running
// (tools/bench_busy.sh, docs/results/2026-12-02-cpu/busy.md), steps at batch
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

namespace cuvae {

// The thread count of a training run, following the cores the process
// actually gets. With two OpenMP threads on two cores and another busy
// process, every parallel region waits for whichever thread the kernel has
// descheduled: on the Zen 5 of 2026-12-04 a batch-200 step went from ~24K to
// ~5K images/s with two competitors. One thread then runs undisturbed on the
// core left to it. Which count is faster is measured, not guessed: the
// backend reports each training step's time (from one Adam update to the
// next), and the tuner runs a window of steps on the settled count, now and
// then a window on a neighbouring count (half or twice), and settles on the
// faster by the windows' median step. A probe that loses by far makes the
// next one twice as rare (at most every kMaxProbeInterval windows: ~1% of
// the steps spent probing on an idle machine); one that wins, or a settled
// count whose steps slow by a third, makes probing frequent again.
//
// Only used where the results do not depend on the thread count (every
// GEMM in shape-fixed blocks, cpu_gemm.h; every other loop element-wise or in
// fixed chunks): the count changes speed, never bits.
class ThreadTuner {
 public:
  static constexpr int kWindow = 8;             // steps per measurement
  static constexpr int kMaxProbeInterval = 64;  // windows between probes, at most

  explicit ThreadTuner(int max_threads);
  // The count to run the next step on.
  int threads() const { return current_; }
  // One step's seconds, run on threads().
  void record(double seconds);

 private:
  int neighbour() const;
  void start_window(int threads);

  int max_;
  int settled_;
  int current_;
  bool probing_ = false;
  bool probe_down_ = true;  // alternates between half and twice the settled count
  int probe_interval_ = 1;  // windows between probes
  int windows_to_probe_ = 1;
  double settled_median_ = 0;   // the last window's median on the settled count
  double reference_median_ = 0; // the settled count's median when it was chosen
  int samples_ = 0;
  double window_[kWindow] = {};
};

}  // namespace cuvae

namespace cuvae {

// CUVAE_THREADS: "auto" (or unset) lets the CPU backend's training steps
// follow the load (ThreadTuner) where the bits do not depend on the thread
// count; "fixed" keeps OMP_NUM_THREADS (or the core count). Throws
// cuvae::Error on any other value.
bool adaptive_threads_requested();

}  // namespace cuvae
