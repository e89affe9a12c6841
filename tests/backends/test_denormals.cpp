// FTZ and DAZ on every computing thread (include/cuvae/backends/cpu/denormals.h). The
// test binary's main (tests/test_main.cpp) enables them as the vae binary
// does, so these tests see the state every other test runs in.
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <limits>
#include <thread>
#include <vector>

#include "cuvae/backends/cpu/cpu_gemm.h"
#include "cuvae/backends/cpu/denormals.h"

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

// subnormal * 1, through volatiles so that the compiler cannot fold it:
// 0 under FTZ/DAZ, else the subnormal itself.
float subnormal_times_one() {
  volatile float subnormal = std::numeric_limits<float>::denorm_min() * 1000.0f;
  volatile float one = 1.0f;
  return subnormal * one;
}

TEST(Denormals, MainThreadFlushes) {
  EXPECT_TRUE(cuvae::flush_denormals_to_zero_in_this_thread());
  EXPECT_EQ(subnormal_times_one(), 0.0f);
}

TEST(Denormals, EveryOpenMpThreadFlushes) {
  const int threads = omp_get_max_threads();
  std::atomic<int> team{0}, flushing{0};
#pragma omp parallel num_threads(threads)
  {
    team += omp_get_thread_num() == 0 ? omp_get_num_threads() : 0;
    if (cuvae::flush_denormals_to_zero_in_this_thread() && subnormal_times_one() == 0.0f) ++flushing;
  }
  EXPECT_EQ(team.load(), threads);
  EXPECT_EQ(flushing.load(), threads);
}

#if defined(__SSE__)
// A thread started after the call inherits the setting; and with the MXCSR
// bits cleared the same product is the subnormal (so the check above can
// fail: this CPU does produce subnormals).
TEST(Denormals, ThreadStartedLaterInheritsAndClearingBringsSubnormalsBack) {
  bool inherited = false;
  float flushed = -1.0f, kept = 0.0f;
  std::thread([&] {
    inherited = cuvae::flush_denormals_to_zero_in_this_thread();
    flushed = subnormal_times_one();
    _mm_setcsr(_mm_getcsr() & ~0x8040u);
    kept = subnormal_times_one();
  }).join();
  EXPECT_TRUE(inherited);
  EXPECT_EQ(flushed, 0.0f);
  EXPECT_EQ(kept, std::numeric_limits<float>::denorm_min() * 1000.0f);
}
#endif

// C = A B, 256^3 (large enough that the library splits it over its
// threads), A all subnormal, B all ones: each element of C is 0 where the
// thread that computed it has DAZ (or FTZ), 256 * 1e-39 (a normal float)
// where not. `gemm` is OpenBLAS's cblas_sgemm or the backend's cpu_sgemm.
template <typename Gemm>
std::vector<float> subnormal_gemm(Gemm gemm) {
  const int n = 256;
  std::vector<float> a(n * n, 1e-39f), b(n * n, 1.0f), c(n * n, -1.0f);
  gemm(n, a.data(), b.data(), c.data());
  return c;
}

int count_zeros(const std::vector<float>& values) {
  int zeros = 0;
  for (float v : values) zeros += v == 0.0f;
  return zeros;
}

// Switching FTZ and DAZ off in the OpenMP pool switches them off in every
// GEMM thread too: the GEMM libraries run on the pool's threads.
template <typename Gemm>
void expect_gemm_threads_follow_the_pool(Gemm gemm) {
  const std::vector<float> flushed = subnormal_gemm(gemm);
  cuvae::set_flush_denormals_to_zero(false);
  const std::vector<float> kept = subnormal_gemm(gemm);
  cuvae::set_flush_denormals_to_zero(true);
  EXPECT_TRUE(cuvae::flush_denormals_to_zero_in_this_thread());
  EXPECT_EQ(count_zeros(flushed), static_cast<int>(flushed.size()));
  EXPECT_EQ(count_zeros(kept), 0);
  EXPECT_NEAR(kept[0], 256e-39f, 1e-42f);
}

TEST(Denormals, OpenBlasThreadsAreThePoolsAndFlush) {
  expect_gemm_threads_follow_the_pool([](int n, const float* a, const float* b, float* c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  });
}

// The library the CPU backend runs (OpenBLAS unless CUVAE_CPU_GEMM=onednn).
TEST(Denormals, CpuBackendGemmThreadsAreThePoolsAndFlush) {
  expect_gemm_threads_follow_the_pool([](int n, const float* a, const float* b, float* c) {
    cuvae::cpu_sgemm(false, false, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  });
}

}  // namespace
