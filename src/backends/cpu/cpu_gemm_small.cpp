// GEMMs through libxsmm in shape-fixed blocks (include/cuvae/backends/cpu/cpu_gemm_small.h).
#include "cuvae/backends/cpu/cpu_gemm_small.h"

#if CUVAE_HAVE_LIBXSMM

#include <cblas.h>
#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace cuvae {

namespace {

// Up to here libxsmm beat OpenBLAS SkylakeX on one thread (batch 20: 20 x
// 784 x 200 is 3.1e6); at batch 200 they were level.
constexpr int64_t kMaxSmallMnk = int64_t{1} << 23;

// C is cut into blocks of about kBlockRows rows by kBlockCols columns, a
// grid that depends on the shape alone, never on the thread count, and k is
// never split: every element of C is one libxsmm kernel's dot product,
// whichever thread runs its block, so the bits do not depend on the thread
// count. (libxsmm's kernels for different widths round differently: cutting
// C by the thread count would make the bits depend on it.) The blocks are
// run in strips along C's longer side (a strip of rows when C has at least
// as many rows as columns, else a strip of columns), and the strips are
// handed out dynamically: a thread that the kernel deschedules holds back
// only its own strip, and two threads share no cache line but at a strip's
// edge.
//
// Each side is cut into near-equal pieces (columns at multiples of 16, one
// AVX-512 register of floats), and the strips are an even number: 200 rows
// are 4 strips of 50, not 64 + 64 + 64 + 8, which two threads split 128 to
// 72 (the GEMMs of a batch-200 step on 2 threads: docs/performance.md).
#ifndef CUVAE_GEMM_BLOCK_ROWS
#define CUVAE_GEMM_BLOCK_ROWS 64
#endif
#ifndef CUVAE_GEMM_BLOCK_COLS
#define CUVAE_GEMM_BLOCK_COLS 64
#endif
constexpr int kBlockRows = CUVAE_GEMM_BLOCK_ROWS;
constexpr int kBlockCols = CUVAE_GEMM_BLOCK_COLS;
constexpr int kColumnAlign = 16;

// [0, length) in `pieces` near-equal pieces whose starts are multiples of
// `align`: the start of piece i (i = pieces gives length).
int piece_start(int length, int pieces, int align, int i) {
  const int64_t units = (length + align - 1) / align;
  return static_cast<int>(std::min<int64_t>(length, align * (units * i / pieces)));
}

// How many pieces of about `block` cut `length` (at least one; at most one
// per `align`).
int piece_count(int length, int block, int align) {
  return std::min((length + block - 1) / block, (length + align - 1) / align);
}

// Rows of a matrix transposed per task.
constexpr int kTransposeRows = 32;

// C's block of rows [i0, i0 + rows) and columns [j0, j0 + cols), B not
// transposed (row-major k x n, ldb). libxsmm is column-major: row-major C =
// op(A) B is C^T = B^T op(A)^T, so B comes first (not transposed) and A
// second (transposed when op(A) is A^T).
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
  // thread inside a parallel region; the same block on any thread count).
  cblas_sgemm(CblasRowMajor, transpose_a ? CblasTrans : CblasNoTrans, CblasNoTrans, rows, cols, k, 1.0f,
              a_rows, lda, b + j0, ldb, beta, c_block, ldc);
}

// Rows [r0, r0 + count) of X (rows x cols, ldx) as columns of xt (cols x
// rows, row-major, ldt).
void transpose_rows(const float* __restrict x, int ldx, int r0, int count, int cols, float* __restrict xt,
                    int ldt) {
  constexpr int kTile = 16;
  for (int p0 = 0; p0 < cols; p0 += kTile) {
    const int p1 = std::min(cols, p0 + kTile);
    for (int r = r0; r < r0 + count; ++r) {
      const float* row = x + static_cast<size_t>(r) * ldx;
      for (int p = p0; p < p1; ++p) xt[static_cast<size_t>(p) * ldt + r] = row[p];
    }
  }
}

// X (rows x cols, ldx) transposed into xt (cols x rows, ldt), shared by the
// team (an orphaned worksharing loop; ends with its barrier).
void transpose(const float* x, int ldx, int rows, int cols, float* xt, int ldt) {
  const int tasks = (rows + kTransposeRows - 1) / kTransposeRows;
#pragma omp for schedule(dynamic)
  for (int t = 0; t < tasks; ++t) {
    const int r0 = t * kTransposeRows;
    transpose_rows(x, ldx, r0, std::min(kTransposeRows, rows - r0), cols, xt, ldt);
  }
}

// Row-major C (m x n) = op(A) B + beta C, B row-major k x n: the blocks,
// shared by the team (an orphaned worksharing loop; ends with its barrier).
void blocks(bool transpose_a, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
            float* c, int ldc) {
  const bool row_strips = m >= n;
  int row_pieces = piece_count(m, kBlockRows, 1), col_pieces = piece_count(n, kBlockCols, kColumnAlign);
  int& strips = row_strips ? row_pieces : col_pieces;
  const int strip_limit = row_strips ? m : (n + kColumnAlign - 1) / kColumnAlign;
  if (strips > 1 && strips % 2 == 1 && strips < strip_limit) ++strips;
  const int per_strip = row_strips ? col_pieces : row_pieces;
#pragma omp for schedule(dynamic)
  for (int s = 0; s < strips; ++s) {
    for (int t = 0; t < per_strip; ++t) {
      const int rb = row_strips ? s : t, cb = row_strips ? t : s;
      const int i0 = piece_start(m, row_pieces, 1, rb), i1 = piece_start(m, row_pieces, 1, rb + 1);
      const int j0 = piece_start(n, col_pieces, kColumnAlign, cb);
      const int j1 = piece_start(n, col_pieces, kColumnAlign, cb + 1);
      if (i1 > i0 && j1 > j0) block(transpose_a, i0, i1 - i0, j0, j1 - j0, k, a, lda, b, ldb, beta, c, ldc);
    }
  }
}

// The calling thread's scratch for transposed operands (a GEMM's blocks are
// shared by the team that this thread forks; GEMMs called on other threads
// have their own).
float* scratch(size_t count) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace

bool blocked_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
                   int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (alpha != 1.0f || (beta != 0.0f && beta != 1.0f)) return false;
  if (m <= 0 || n <= 0 || k <= 0) return false;
  // The whole team even when a thread gets no block: a smaller team lets the
  // spare thread fall asleep, and the next parallel region pays its wake-up.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (!transpose_b) {
#pragma omp parallel num_threads(threads)
    blocks(transpose_a, m, n, k, a, lda, b, ldb, beta, c, ldc);
    return true;
  }
  // libxsmm 1.17's JIT takes no transposed first operand (our B in its
  // column-major terms), so an operand is written out transposed (exact: no
  // bits change), whichever is less to move: B (n x k), or op(A) and the
  // result, as C^T = B op(A)^T (a batch-20 step's dX: 20 x k and 20 x n
  // against n x k).
  if (int64_t{n} * k <= int64_t{m} * (k + n)) {
    float* bt = scratch(static_cast<size_t>(k) * n);  // B^T, k x n
#pragma omp parallel num_threads(threads)
    {
      transpose(b, ldb, n, k, bt, n);
      blocks(transpose_a, m, n, k, a, lda, bt, n, beta, c, ldc);
    }
    return true;
  }
  // C^T (n x m) = B op(A)^T: B as the untransposed left operand, op(A)^T
  // (k x m) written out unless op(A) is A^T, which A already stores.
  float* buffer = scratch(static_cast<size_t>(n) * m + (transpose_a ? 0 : static_cast<size_t>(k) * m));
  float* ct = buffer;  // C^T, n x m
  float* at = transpose_a ? nullptr : buffer + static_cast<size_t>(n) * m;
  const float* right = transpose_a ? a : at;
  const int ld_right = transpose_a ? lda : m;
#pragma omp parallel num_threads(threads)
  {
    if (!transpose_a) transpose(a, lda, m, k, at, m);
    blocks(false, n, m, k, b, ldb, right, ld_right, 0.0f, ct, m);
    if (beta == 0.0f) {
      transpose(ct, m, n, m, c, ldc);
    } else {
      const int tasks = (m + kTransposeRows - 1) / kTransposeRows;
#pragma omp for schedule(dynamic)
      for (int t = 0; t < tasks; ++t) {
        for (int i = t * kTransposeRows; i < std::min(m, (t + 1) * kTransposeRows); ++i) {
          for (int j = 0; j < n; ++j) c[static_cast<size_t>(i) * ldc + j] += ct[static_cast<size_t>(j) * m + i];
        }
      }
    }
  }
  return true;
}

bool small_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (transpose_b || int64_t{m} * n * k > kMaxSmallMnk) return false;
  return blocked_sgemm(transpose_a, false, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

std::string small_sgemm_library() {
  return std::string("libxsmm ") + LIBXSMM_VERSION + " (JIT for " + libxsmm_get_target_arch() + ")";
}

}  // namespace cuvae

#else  // no libxsmm in this build: every GEMM goes to OpenBLAS or oneDNN

namespace cuvae {

bool blocked_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
  return false;
}

bool small_sgemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
  return false;
}

std::string small_sgemm_library() { return ""; }

}  // namespace cuvae

#endif
