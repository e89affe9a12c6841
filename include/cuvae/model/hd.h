// CUVAE_HD marks functions that compile for both the host and the device.
//
// The per-element math of the model exists once, in headers, marked CUVAE_HD:
// the CPU backend calls it from plain loops, the CUDA kernels call the same
// functions from device code. Without nvcc the macro is plain `inline`, so
// these headers are ordinary C++.
#pragma once

#if defined(__CUDACC__)
#define CUVAE_HD __host__ __device__ __forceinline__
#else
#define CUVAE_HD inline
#endif
