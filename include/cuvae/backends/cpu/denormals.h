// Flush-to-zero (FTZ) and denormals-are-zero (DAZ) on every thread that
// computes: the main thread and every OpenMP worker (OpenBLAS's OpenMP build
// runs its GEMMs on the same workers).
//
// Why: over a long run Adam's moments of weights whose gradients are mostly
// zero decay geometrically into the subnormal range (below 1.2e-38), and on
// x86 every operation on a subnormal takes a microcode assist: late epochs
// of the seed's model ran 5x slower (issue 14). With FTZ a subnormal result
// becomes 0, with DAZ a subnormal input reads as 0. A run's bits change
// (compared with a run without FTZ), its determinism does not: the same seed
// gives the same bits. docs/numerics.md, "Flush-to-zero" says more.
#pragma once

namespace cuvae {

// Sets FTZ and DAZ in the calling thread and in every thread of the OpenMP
// pool (as many as omp_get_max_threads()). Call it at the start of main,
// before any other thread starts: threads created later inherit the
// creating thread's floating-point control state (POSIX; Linux copies
// MXCSR on clone), so every later OpenMP or std::thread gets it too.
// Without SSE (not x86-64) it does nothing.
void enable_flush_denormals_to_zero();

// Sets (on) or clears (off) FTZ and DAZ in the calling thread and in every
// thread of the OpenMP pool; for benchmarks that compare the two.
void set_flush_denormals_to_zero(bool on);

// Whether FTZ and DAZ are both set in the calling thread.
bool flush_denormals_to_zero_in_this_thread();

}  // namespace cuvae
