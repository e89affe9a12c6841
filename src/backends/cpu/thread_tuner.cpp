// The thread count under load (include/cuvae/backends/cpu/thread_tuner.h).
#include "cuvae/backends/cpu/thread_tuner.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cuvae/error.h"

namespace cuvae {

ThreadTuner::ThreadTuner(int max_threads)
    : max_(std::max(1, max_threads)), settled_(max_), current_(max_) {}

int ThreadTuner::neighbour() const {
  const int down = std::max(1, settled_ / 2), up = std::min(max_, settled_ * 2);
  if (down == settled_) return up;
  if (up == settled_) return down;
  return probe_down_ ? down : up;
}

void ThreadTuner::start_window(int threads) {
  current_ = threads;
  samples_ = 0;
}

void ThreadTuner::record(double seconds) {
  window_[samples_++] = seconds;
  if (samples_ < kWindow) return;
  // Counts are compared by the window's mean step, which is throughput: under
  // load a descheduled thread holds up a few steps by many times their
  // length, and the median hid them (two busy loops on the Zen 3 of
  // 2026-12-06: 2 threads' median step 9.3 ms against 1 thread's 10.2, their
  // mean 20.6 against 12.9; the median-led tuner ran 35-38% of the steps on
  // one thread, replayed). Whether the load changed is judged by the median,
  // which those tails do not move on an idle machine.
  double sum = 0;
  for (double t : window_) sum += t;
  const double mean = sum / kWindow;
  std::sort(window_, window_ + kWindow);
  const double median = 0.5 * (window_[kWindow / 2 - 1] + window_[kWindow / 2]);
  if (probing_) {
    probing_ = false;
    probe_down_ = !probe_down_;
    if (mean < 0.97 * settled_mean_) {  // the probe won: settle there, look again soon
      settled_ = current_;
      settled_mean_ = mean;
      reference_median_ = median;
      probe_interval_ = 1;
    } else {
      // Lost: the next probe twice as rare, four times when by far (a third
      // or more). A narrow loser probed at the same pace would keep every
      // other window on the slower count (the Zen 4 of 2026-12-06, one
      // competing process: 1 thread 5.5 ms, 2 threads 6.4 ms a step).
      const int factor = mean > 1.33 * settled_mean_ ? 4 : 2;
      probe_interval_ = std::min(kMaxProbeInterval, probe_interval_ * factor);
    }
    windows_to_probe_ = probe_interval_;
    start_window(settled_);
    return;
  }
  settled_mean_ = mean;
  if (reference_median_ == 0 || median < reference_median_) reference_median_ = median;
  if (median > 1.33 * reference_median_) {  // the settled count slowed: the load changed
    probe_interval_ = 1;
    windows_to_probe_ = std::min(windows_to_probe_, 1);
    reference_median_ = median;
  }
  if (max_ > 1 && --windows_to_probe_ <= 0) {
    probing_ = true;
    start_window(neighbour());
    return;
  }
  start_window(settled_);
}


bool adaptive_threads_requested() {
  const char* raw = std::getenv("CUVAE_THREADS");
  const std::string value = raw != nullptr ? raw : "";
  if (value.empty() || value == "auto") return true;
  if (value == "fixed") return false;
  throw Error("CUVAE_THREADS must be auto or fixed, got '" + value + "'");
}

}  // namespace cuvae
