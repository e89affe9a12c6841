// Small GEMMs through libxsmm (include/cuvae/backends/cpu/cpu_gemm_small.h).
#include "cuvae/backends/cpu/cpu_gemm_small.h"

#if CUVAE_HAVE_LIBXSMM

#include <cblas.h>
#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace cuvae {

namespace {

// Up to here libxsmm beat OpenBLAS on one thread (batch 20: 20 x 784 x 200 is
// 3.1e6); at batch 200 they were level and above it OpenBLAS won.
constexpr int64_t kMaxMnk = int64_t{1} << 23;
// C is cut into blocks of kBlock rows or kBlock columns, whichever C has
// more of (the forward pass at batch 20 cuts its 200-784 columns, a dW GEMM
// its 200-784 rows: contiguous parts of the gradient, which Adam then reads
// on the same cores), and each thread runs a contiguous range of blocks. The
// blocks depend on the shape alone, not on the thread count: libxsmm's
// kernels for different widths round differently, so cutting C by the
// thread count would make the bits depend on it.
constexpr int kBlock = 64;

// C's block of rows [i0, i0 + rows) and columns [j0, j0 + cols). libxsmm is
// column-major: row-major C = op(A) op(B) is C^T = op(B)^T op(A)^T, so B
// comes first (not transposed) and A second (transposed when op(A) is A^T).
void block(bool transpose_a, int i0, int rows, int j0, int cols, int k, const float* a, int lda,
           const float* b, int ldb, float beta, float* c, int ldc) {
  const float* a_rows = transpose_a ? a + i0 : a + static_cast<size_t>(i0) * lda;
  float* c_block = c + static_cast<size_t>(i0) * ldc + j0;
  const libxsmm_blasint mm = cols, nn = rows, kk = k, ld_b = ldb, ld_a = lda, ld_c = ldc;
  const float alpha = 1.0f;
  const int flags = transpose_a ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  const libxsmm_smmfunction kernel =
      libxsmm_smmdispatch(mm, nn, kk, &ld_b, &ld_a, &ld_c, &alpha, &beta, &flags, nullptr);
  if (kernel != nullptr) {
    kernel(b + j0, a_rows, c_block);
    return;
  }
  // No JIT for this shape on this CPU: OpenBLAS on the same block (one
  // thread inside a parallel region).
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f,
              a_rows, lda, b + j0, ldb, beta, c_block, ldc);
}

}  // namespace

bool small_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (transpose_b || alpha != 1.0f || (beta != 0.0f && beta != 1.0f)) return false;
  if (int64_t{m} * n * k > kMaxMnk || m == 0 || n == 0 || k == 0) return false;
  const bool split_rows = m >= n;
  const int extent = split_rows ? m : n;
  const int blocks = (extent + kBlock - 1) / kBlock;
  // The whole team even when a thread gets no block: a smaller team lets the
  // spare thread fall asleep, and the next parallel region pays its wake-up.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int blk = 0; blk < blocks; ++blk) {
    const int first = blk * kBlock, size = std::min(kBlock, extent - first);
    if (split_rows) {
      block(transpose_a, first, size, 0, n, k, a, lda, b, ldb, beta, c, ldc);
    } else {
      block(transpose_a, 0, m, first, size, k, a, lda, b, ldb, beta, c, ldc);
    }
  }
  return true;
}

std::string small_sgemm_library() {
  return std::string("libxsmm ") + LIBXSMM_VERSION + " (JIT for " + libxsmm_get_target_arch() + ")";
}

}  // namespace cuvae

#else  // no libxsmm in this build: every GEMM goes to OpenBLAS or oneDNN

namespace cuvae {

bool small_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
  return false;
}

std::string small_sgemm_library() { return ""; }

}  // namespace cuvae

#endif
