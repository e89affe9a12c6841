// Small GEMMs through libxsmm's JIT-compiled kernels (libxsmm-dev), for the
// shapes of a small-batch step, where OpenBLAS's packing and threading cost
// more than the arithmetic: at batch 20 on one AVX-512 core libxsmm ran the
// forward and dW GEMMs 1.3x faster than OpenBLAS SkylakeX
// (docs/results/2026-12-02-cpu/gemm-kernels-1-thread.md).
//
// C is cut into blocks of about 64 x 64 that depend on the shape alone (near-
// equal pieces, an even number of strips), handed out
// dynamically to the OpenMP threads, so the bits do not depend on
// the thread count (tested), unlike OpenBLAS's on these shapes.
#pragma once

#include <string>

namespace cuvae {

// Row-major C = op(A) op(B) + beta C through libxsmm, when this build has it,
// the shape is small (m n k at most 2^23: batch 20, not 200), alpha is 1,
// beta is 0 or 1 and B is not transposed (libxsmm 1.17's JIT takes no
// transposed first operand, which is our B in its column-major terms).
// Returns false, having done nothing, otherwise.
bool small_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);

// Any shape, either operand transposed, through libxsmm in blocks of about 64 x 64
// of C fixed by the shape (k never split), handed out dynamically to the
// OpenMP threads; a transposed B is first written out transposed (libxsmm
// 1.17 takes no transposed first operand). The bits do not depend on the
// thread count. Returns false, having done nothing, without libxsmm, unless
// alpha is 1 and beta 0 or 1, or on an empty shape.
bool blocked_sgemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
                   int lda, const float* b, int ldb, float beta, float* c, int ldc);

// "libxsmm 1.17.0 (JIT for avx512_core)" or "" in a build without it.
std::string small_sgemm_library();

}  // namespace cuvae
