// FTZ and DAZ in MXCSR, per thread (include/cuvae/backends/cpu/denormals.h).
#include "cuvae/backends/cpu/denormals.h"

#include <omp.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace cuvae {

namespace {

#if defined(__SSE__)
// MXCSR bit 15 is flush-to-zero, bit 6 denormals-are-zero.
constexpr unsigned kFtzDaz = 0x8040u;
#endif

void set_in_this_thread(bool on) {
#if defined(__SSE__)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(on ? (csr | kFtzDaz) : (csr & ~kFtzDaz));
#else
  (void)on;
#endif
}

}  // namespace

bool flush_denormals_to_zero_in_this_thread() {
#if defined(__SSE__)
  return (_mm_getcsr() & kFtzDaz) == kFtzDaz;
#else
  return false;
#endif
}

void set_flush_denormals_to_zero(bool on) {
  set_in_this_thread(on);
  // A team of the pool's full size reaches every worker: libgomp keeps its
  // threads and gives a team of n threads workers 1..n-1 of the pool, the
  // ones every later region (OpenBLAS's included) draws from.
#pragma omp parallel num_threads(omp_get_max_threads())
  set_in_this_thread(on);
}

void enable_flush_denormals_to_zero() { set_flush_denormals_to_zero(true); }

}  // namespace cuvae
