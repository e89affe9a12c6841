// The small-GEMM path through libxsmm (include/cuvae/backends/cpu/cpu_gemm_small.h): the
// model's batch-20 shapes against a double-precision reference, the same
// bits on 1, 2 and 3 threads, and the shapes it must leave to OpenBLAS.
// Skipped in a build without libxsmm.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuvae/backends/cpu/cpu_gemm_small.h"

namespace {

struct Case {
  bool transpose_a;
  int m, n, k;
};

// The encoder's and decoder's forward (X W) and dW (X^T dY) shapes at batch
// 20, and odd sizes that leave partial 16-wide blocks.
const Case kCases[] = {{false, 20, 200, 784}, {false, 20, 784, 200}, {false, 20, 100, 200},
                       {true, 784, 200, 20},  {true, 50, 200, 20},   {true, 200, 100, 20},
                       {false, 7, 33, 5},     {true, 45, 17, 3},     {false, 1, 1, 1}};

std::vector<float> normals(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

#define SKIP_WITHOUT_LIBXSMM()                                                          \
  if (cuvae::small_sgemm_library().empty()) GTEST_SKIP() << "this build has no libxsmm"

// C = op(A) B + beta C in double, row-major, A stored k x m when transposed.
std::vector<double> reference(const Case& c, const std::vector<float>& a, const std::vector<float>& b,
                              float beta, const std::vector<float>& c0) {
  std::vector<double> out(static_cast<size_t>(c.m) * c.n);
  for (int i = 0; i < c.m; ++i) {
    for (int j = 0; j < c.n; ++j) {
      double sum = beta * static_cast<double>(c0[static_cast<size_t>(i) * c.n + j]);
      for (int p = 0; p < c.k; ++p) {
        const float av = c.transpose_a ? a[static_cast<size_t>(p) * c.m + i] : a[static_cast<size_t>(i) * c.k + p];
        sum += static_cast<double>(av) * b[static_cast<size_t>(p) * c.n + j];
      }
      out[static_cast<size_t>(i) * c.n + j] = sum;
    }
  }
  return out;
}

std::vector<float> run(const Case& c, const std::vector<float>& a, const std::vector<float>& b, float beta,
                       std::vector<float> out) {
  const int lda = c.transpose_a ? c.m : c.k;
  EXPECT_TRUE(cuvae::small_sgemm(c.transpose_a, false, c.m, c.n, c.k, 1.0f, a.data(), lda, b.data(), c.n, beta,
                                 out.data(), c.n));
  return out;
}

TEST(SmallSgemm, MatchesDoubleReferenceOnTheModelsShapes) {
  SKIP_WITHOUT_LIBXSMM();
  for (const Case& c : kCases) {
    const std::vector<float> a = normals(static_cast<size_t>(c.m) * c.k, 1), b = normals(static_cast<size_t>(c.k) * c.n, 2);
    const std::vector<float> c0 = normals(static_cast<size_t>(c.m) * c.n, 3);
    for (float beta : {0.0f, 1.0f}) {
      const std::vector<float> got = run(c, a, b, beta, c0);
      const std::vector<double> want = reference(c, a, b, beta, c0);
      // A float sum of k products of N(0,1) values: its rounding error is at
      // most ~k 2^-24 times the sum of |terms| (~0.8 k); 1e-6 k covers that
      // with room.
      const double tolerance = 1e-6 * (c.k + 1) * std::sqrt(static_cast<double>(c.k) + 1);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], tolerance)
            << c.m << "x" << c.n << "x" << c.k << (c.transpose_a ? " A^T" : "") << " beta " << beta << " at " << i;
      }
    }
  }
}

TEST(SmallSgemm, BitsDoNotDependOnTheThreadCount) {
  SKIP_WITHOUT_LIBXSMM();
  const int threads_before = omp_get_max_threads();
  for (const Case& c : kCases) {
    const std::vector<float> a = normals(static_cast<size_t>(c.m) * c.k, 4), b = normals(static_cast<size_t>(c.k) * c.n, 5);
    const std::vector<float> c0(static_cast<size_t>(c.m) * c.n, 0.0f);
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
      omp_set_num_threads(threads);
      results.push_back(run(c, a, b, 0.0f, c0));
    }
    for (size_t r = 1; r < results.size(); ++r) {
      EXPECT_EQ(0, std::memcmp(results[0].data(), results[r].data(), results[0].size() * sizeof(float)))
          << c.m << "x" << c.n << "x" << c.k << " on " << r + 1 << " threads";
    }
  }
  omp_set_num_threads(threads_before);
}

// What libxsmm's JIT cannot take, or where OpenBLAS is faster: declined, C
// untouched.
TEST(SmallSgemm, LeavesOtherShapesToTheBlas) {
  SKIP_WITHOUT_LIBXSMM();
  std::vector<float> a(1024 * 1024, 1.0f), b(1024 * 1024, 1.0f), c(1024 * 1024, 7.0f);
  EXPECT_FALSE(cuvae::small_sgemm(false, true, 20, 200, 784, 1.0f, a.data(), 784, b.data(), 784, 0.0f, c.data(), 200));
  EXPECT_FALSE(cuvae::small_sgemm(false, false, 20, 200, 784, 2.0f, a.data(), 784, b.data(), 200, 0.0f, c.data(), 200));
  EXPECT_FALSE(cuvae::small_sgemm(false, false, 20, 200, 784, 1.0f, a.data(), 784, b.data(), 200, 0.5f, c.data(), 200));
  EXPECT_FALSE(cuvae::small_sgemm(false, false, 200, 784, 200, 1.0f, a.data(), 200, b.data(), 784, 0.0f, c.data(), 784));
  for (float x : c) ASSERT_EQ(x, 7.0f);
}

// blocked_sgemm: every shape of the model's steps and evaluation, either
// operand transposed (op(B) = B^T goes through a transposed copy of B, or of
// op(A) and the result, whichever is smaller), against a double reference,
// with the same bits on 1, 2 and 3 threads.
struct AnyCase {
  bool transpose_a, transpose_b;
  int m, n, k;
};
const AnyCase kAnyCases[] = {
    {false, false, 200, 784, 200}, {false, false, 200, 200, 784}, {true, false, 784, 200, 200},
    {false, true, 200, 784, 200},  {false, true, 20, 784, 200},   {false, true, 200, 50, 200},
    {false, true, 20, 200, 100},   {true, true, 33, 70, 65},      {false, false, 1000, 784, 200},
    {false, false, 67, 129, 3},    {true, false, 129, 67, 1},
    // Pieces at their edges: a column piece of one to sixteen columns, one
    // row, odd strip counts made even (200 x 100: the two-layer model's).
    {false, false, 200, 100, 200}, {false, false, 17, 17, 5},     {false, false, 1, 1, 1},
    {true, false, 65, 1, 9},       {false, false, 3, 1000, 2},   {false, true, 130, 33, 7}};

std::vector<float> run_any(const AnyCase& c, const std::vector<float>& a, const std::vector<float>& b, float beta,
                           std::vector<float> out) {
  const int lda = c.transpose_a ? c.m : c.k, ldb = c.transpose_b ? c.k : c.n;
  EXPECT_TRUE(cuvae::blocked_sgemm(c.transpose_a, c.transpose_b, c.m, c.n, c.k, 1.0f, a.data(), lda, b.data(), ldb,
                                   beta, out.data(), c.n));
  return out;
}

TEST(BlockedSgemm, MatchesDoubleReferenceInEveryLayout) {
  SKIP_WITHOUT_LIBXSMM();
  for (const AnyCase& c : kAnyCases) {
    const std::vector<float> a = normals(static_cast<size_t>(c.m) * c.k, 6), b = normals(static_cast<size_t>(c.k) * c.n, 7);
    const std::vector<float> c0 = normals(static_cast<size_t>(c.m) * c.n, 8);
    for (float beta : {0.0f, 1.0f}) {
      const std::vector<float> got = run_any(c, a, b, beta, c0);
      const double tolerance = 1e-6 * (c.k + 1) * std::sqrt(static_cast<double>(c.k) + 1);
      for (int i = 0; i < c.m; ++i) {
        for (int j = 0; j < c.n; ++j) {
          double want = beta * static_cast<double>(c0[static_cast<size_t>(i) * c.n + j]);
          for (int p = 0; p < c.k; ++p) {
            const float av = c.transpose_a ? a[static_cast<size_t>(p) * c.m + i] : a[static_cast<size_t>(i) * c.k + p];
            const float bv = c.transpose_b ? b[static_cast<size_t>(j) * c.k + p] : b[static_cast<size_t>(p) * c.n + j];
            want += static_cast<double>(av) * bv;
          }
          ASSERT_NEAR(got[static_cast<size_t>(i) * c.n + j], want, tolerance)
              << c.m << "x" << c.n << "x" << c.k << (c.transpose_a ? " A^T" : "") << (c.transpose_b ? " B^T" : "")
              << " beta " << beta << " at " << i << "," << j;
        }
      }
    }
  }
}

TEST(BlockedSgemm, BitsDoNotDependOnTheThreadCount) {
  SKIP_WITHOUT_LIBXSMM();
  const int threads_before = omp_get_max_threads();
  for (const AnyCase& c : kAnyCases) {
    const std::vector<float> a = normals(static_cast<size_t>(c.m) * c.k, 9), b = normals(static_cast<size_t>(c.k) * c.n, 10);
    const std::vector<float> c0 = normals(static_cast<size_t>(c.m) * c.n, 11);
    for (float beta : {0.0f, 1.0f}) {
      std::vector<std::vector<float>> results;
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        results.push_back(run_any(c, a, b, beta, c0));
      }
      for (size_t r = 1; r < results.size(); ++r) {
        EXPECT_EQ(0, std::memcmp(results[0].data(), results[r].data(), results[0].size() * sizeof(float)))
            << c.m << "x" << c.n << "x" << c.k << " beta " << beta << " on " << r + 1 << " threads";
      }
    }
  }
  omp_set_num_threads(threads_before);
}

TEST(BlockedSgemm, DeclinesWhatLibxsmmCannotTake) {
  SKIP_WITHOUT_LIBXSMM();
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 7.0f);
  EXPECT_FALSE(cuvae::blocked_sgemm(false, false, 8, 8, 8, 2.0f, a.data(), 8, b.data(), 8, 0.0f, c.data(), 8));
  EXPECT_FALSE(cuvae::blocked_sgemm(false, false, 8, 8, 8, 1.0f, a.data(), 8, b.data(), 8, 0.5f, c.data(), 8));
  EXPECT_FALSE(cuvae::blocked_sgemm(false, false, 8, 8, 0, 1.0f, a.data(), 8, b.data(), 8, 0.0f, c.data(), 8));
  for (float x : c) ASSERT_EQ(x, 7.0f);
}

}  // namespace
