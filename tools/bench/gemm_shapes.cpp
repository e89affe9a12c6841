// gemm-shapes: one training step's GEMMs of the seed's model (encoder
// 784-200-200-100, decoder 50-200-200-784) at several batch sizes, timed
// through one GEMM library, so that libraries and OpenBLAS kernels can be
// compared on the shapes that matter. tools/bench/bench_gemm_kernels.sh builds it
// once per library (-DGEMM_WITH_DNNL for oneDNN's dnnl_sgemm,
// -DGEMM_WITH_LIBXSMM for libxsmm's JIT kernels, else any CBLAS: OpenBLAS or
// BLIS) and runs the builds alternately.
//
// libxsmm (1.17): a kernel JIT-compiled per shape by libxsmm_smmdispatch,
// single-threaded (libxsmm's small-matrix kernels are; THREADS=1 compares it
// fairly); shapes it declines (its JIT takes no transposed A) go through
// libxsmm_sgemm, which hands them to the BLAS it is linked with (OpenBLAS).
//
// Per batch, three passes as src/model/vae_model.cpp calls them: fwd Y = X W
// (rows x in times in x out), dW = X^T dY, dX = dY W^T (none for the
// encoder's first layer). Output, one line per batch and pass:
//   batch PASS ms_per_step gflops
// and a last line "square2048 - ms gflops" for a large square SGEMM.
//
// Usage: gemm-shapes [REPEATS]   (default 7; the median is printed)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#if GEMM_WITH_DNNL
#include <dnnl.h>
#elif GEMM_WITH_LIBXSMM
#include <libxsmm.h>
#else
#include <cblas.h>
#endif

namespace {

struct Shape {
  bool transpose_a, transpose_b;
  int m, n, k;
};

// C (m x n) = op(A) op(B), row-major, leading dimensions as stored.
void sgemm(const Shape& s, const float* a, const float* b, float* c) {
  const int lda = s.transpose_a ? s.m : s.k, ldb = s.transpose_b ? s.k : s.n;
#if GEMM_WITH_DNNL
  dnnl_sgemm(s.transpose_a ? 'T' : 'N', s.transpose_b ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a, lda, b,
             ldb, 0.0f, c, s.n);
#elif GEMM_WITH_LIBXSMM
  // Column-major, as libxsmm is: row-major C = op(A) op(B) is C^T = op(B)^T op(A)^T.
  const libxsmm_blasint m = s.n, n = s.m, k = s.k, ld_first = ldb, ld_second = lda, ldc = s.n;
  const float alpha = 1.0f, beta = 0.0f;
  const int flags = (s.transpose_b ? LIBXSMM_GEMM_FLAG_TRANS_A : 0) |
                    (s.transpose_a ? LIBXSMM_GEMM_FLAG_TRANS_B : 0);
  const libxsmm_smmfunction kernel = libxsmm_smmdispatch(m, n, k, &ld_first, &ld_second, &ldc,
                                                         &alpha, &beta, &flags, nullptr);
  if (kernel != nullptr) {
    kernel(b, a, c);
  } else {
    const char first = s.transpose_b ? 'T' : 'N', second = s.transpose_a ? 'T' : 'N';
    libxsmm_sgemm(&first, &second, &m, &n, &k, &alpha, b, &ld_first, a, &ld_second, &beta, c, &ldc);
  }
#else
  cblas_sgemm(CblasRowMajor, s.transpose_a ? CblasTrans : CblasNoTrans,
              s.transpose_b ? CblasTrans : CblasNoTrans, s.m, s.n, s.k, 1.0f, a, lda, b, ldb, 0.0f,
              c, s.n);
#endif
}

// The shapes of one pass over every layer at `rows` rows.
std::vector<Shape> pass_shapes(const std::string& pass, int rows) {
  const int layers[][2] = {{784, 200}, {200, 200}, {200, 100}, {50, 200}, {200, 200}, {200, 784}};
  std::vector<Shape> shapes;
  for (int i = 0; i < 6; ++i) {
    const int in = layers[i][0], out = layers[i][1];
    if (pass == "fwd") shapes.push_back({false, false, rows, out, in});
    if (pass == "dW") shapes.push_back({true, false, in, out, rows});
    if (pass == "dX" && i != 0) shapes.push_back({false, true, rows, in, out});
  }
  return shapes;
}

double flops_of(const std::vector<Shape>& shapes) {
  double flops = 0;
  for (const Shape& s : shapes) flops += 2.0 * s.m * s.n * s.k;
  return flops;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Median seconds of one run of `shapes`, each repetition lasting >= ~20 ms.
double median_seconds(const std::vector<Shape>& shapes, int repeats, const float* a,
                      const float* b, float* c) {
  auto run = [&] {
    for (const Shape& s : shapes) sgemm(s, a, b, c);
  };
  const auto probe = std::chrono::steady_clock::now();
  run();
  run();
  const int calls = std::max(1, static_cast<int>(0.02 / std::max(1e-7, seconds_since(probe) / 2)));
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) run();
    times.push_back(seconds_since(start) / calls);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 7;
  if (repeats < 1) {
    std::fprintf(stderr, "gemm-shapes: error: REPEATS must be a positive integer, got '%s'\n", argv[1]);
    return 2;
  }
  const size_t largest = 4096 * 784;
  std::vector<float> a(largest), b(largest), c(largest);
  for (size_t i = 0; i < largest; ++i) {
    a[i] = static_cast<float>(i % 97) * 0.01f - 0.5f;
    b[i] = static_cast<float>(i % 89) * 0.01f - 0.4f;
  }
  for (int rows : {20, 200, 1000, 4096}) {
    for (const char* pass : {"fwd", "dW", "dX"}) {
      const std::vector<Shape> shapes = pass_shapes(pass, rows);
      const double seconds = median_seconds(shapes, repeats, a.data(), b.data(), c.data());
      std::printf("%d %s %.4f %.1f\n", rows, pass, 1e3 * seconds, flops_of(shapes) / seconds / 1e9);
    }
  }
  const int n = 2048;
  std::vector<float> big_a(size_t(n) * n, 0.25f), big_b(size_t(n) * n, 0.5f), big_c(size_t(n) * n);
  const std::vector<Shape> square = {{false, false, n, n, n}};
  const double seconds = median_seconds(square, std::min(repeats, 5), big_a.data(), big_b.data(), big_c.data());
  std::printf("square2048 - %.4f %.1f\n", 1e3 * seconds, flops_of(square) / seconds / 1e9);
  return 0;
}
