// The CPU backend's thread count under load (ThreadTuner) and CUVAE_THREADS.
#pragma once

#include <string>

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
// faster by the windows' mean step (throughput; see record()). A probe that
// loses makes the next one twice as rare, four times when it loses by a third
// or more (at most every kMaxProbeInterval windows: ~1% of the steps spent
// probing on an idle machine); one that wins, or a settled count whose steps
// slow by a third, makes probing frequent again.
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
  double settled_mean_ = 0;      // the last window's mean step on the settled count
  double reference_median_ = 0;  // the settled count's lowest median step since it was chosen
  int samples_ = 0;
  double window_[kWindow] = {};
};


// CUVAE_THREADS: "auto" (or unset) lets the CPU backend's training steps
// follow the load (ThreadTuner) where the bits do not depend on the thread
// count; "fixed" keeps OMP_NUM_THREADS (or the core count). Throws
// cuvae::Error on any other value.
bool adaptive_threads_requested();

}  // namespace cuvae
