// The CPU backend's thread count under load (include/cuvae/backends/cpu/thread_tuner.h),
// on made-up step times.
#include <gtest/gtest.h>

#include "cuvae/backends/cpu/thread_tuner.h"

namespace {

// The thread tuner on made-up step times: it settles on the faster count,
// probes rarely when the other count loses by far, and comes back when the
// load changes.
double run_tuner(cuvae::ThreadTuner& tuner, int steps, double one_thread_s, double two_threads_s, int* steps_on_one) {
  double total = 0;
  for (int s = 0; s < steps; ++s) {
    const double t = tuner.threads() == 1 ? one_thread_s : two_threads_s;
    if (tuner.threads() == 1 && steps_on_one != nullptr) ++*steps_on_one;
    total += t;
    tuner.record(t);
  }
  return total;
}

TEST(ThreadTuner, FollowsTheFasterCountAndProbesRarelyWhenItIsClear) {
  cuvae::ThreadTuner tuner(2);
  EXPECT_EQ(tuner.threads(), 2);
  // Idle: two threads 1.7x faster. Probing one thread costs little.
  int on_one = 0;
  run_tuner(tuner, 5000, 1.7e-3, 1.0e-3, &on_one);
  EXPECT_EQ(tuner.threads(), 2);
  EXPECT_LT(on_one, 5000 / 40) << "probing one thread took " << on_one << " of 5000 steps";
  // Busy: two threads 4x slower than one. Within a few windows it is on one.
  on_one = 0;
  run_tuner(tuner, 2000, 1.7e-3, 6.8e-3, &on_one);
  EXPECT_EQ(tuner.threads(), 1);
  EXPECT_GT(on_one, 2000 * 9 / 10);
  // Idle again: back to two.
  on_one = 0;
  run_tuner(tuner, 3000, 1.7e-3, 1.0e-3, &on_one);
  EXPECT_EQ(tuner.threads(), 2);
  // One competitor: one thread a little faster (5.5 against 6.4 ms, the Zen 4
  // of 2026-12-06). It settles on one and probes two rarely, not every other
  // window.
  on_one = 0;
  run_tuner(tuner, 4000, 5.5e-3, 6.4e-3, &on_one);
  EXPECT_EQ(tuner.threads(), 1);
  EXPECT_GT(on_one, 4000 * 9 / 10) << "two threads took " << 4000 - on_one << " of 4000 steps";
  // Two competitors: two threads' typical step is the shorter (8 against 10
  // ms), but one step in 8 waits 60 ms for a descheduled thread, so their
  // mean (14.5 ms) loses. The tuner follows the mean: it settles on one.
  cuvae::ThreadTuner loaded(2);
  int on_one_loaded = 0;
  for (int s = 0; s < 4000; ++s) {
    const bool one = loaded.threads() == 1;
    on_one_loaded += one ? 1 : 0;
    loaded.record(one ? 10e-3 : (s % 8 == 7 ? 60e-3 : 8e-3));
  }
  EXPECT_EQ(loaded.threads(), 1);
  EXPECT_GT(on_one_loaded, 4000 * 9 / 10) << "two threads took " << 4000 - on_one_loaded << " of 4000 steps";
  // One core: nothing to choose.
  cuvae::ThreadTuner single(1);
  run_tuner(single, 100, 1e-3, 1e-3, nullptr);
  EXPECT_EQ(single.threads(), 1);
}

}  // namespace
