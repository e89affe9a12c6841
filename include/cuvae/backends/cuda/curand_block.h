// The device's random numbers: cuRAND's Philox4_32_10 through its device API
// (curand_kernel.h, header only, no host generator), at the counter that
// philox.h's random_block uses, so the CPU and the GPU draw the same bits:
//   curand_random_block(key, g) == random_block(key, g)
// (the mapping is documented in philox.h; tests/backends/test_curand_mapping.cpp
// checks it on the host against cuRAND's own functions). The raw bits then
// go through philox.h's shared conversions (uniform_from_bits,
// normals_from_block), so binarization is bit-identical across backends.
//
// cuRAND's functions are `static __forceinline__ __device__` unless
// QUALIFIERS is defined before curand_kernel.h: the host test defines it as
// `static inline` and includes this header from a .cpp, so the same
// function runs on the host there.
#pragma once

#include <curand_kernel.h>

#include "cuvae/model/philox.h"

#if defined(__CUDACC__)
#define CUVAE_CURAND_FN __device__ __forceinline__
#else
#define CUVAE_CURAND_FN inline
#endif

namespace cuvae {

// The four raw 32-bit draws of element group `group` of `key`. curand_init
// and curand4 compute the block three times (after the subsequence, after the
// offset, and the next counter's after curand4); with the state local, all
// but the returned one are dead code the compiler removes.
CUVAE_CURAND_FN Philox4 curand_random_block(const RandomKey& key, uint64_t group) {
  curandStatePhilox4_32_10_t state;
  curand_init(key.seed, curand_subsequence(key), curand_offset(group), &state);
  const uint4 bits = curand4(&state);
  return Philox4{{bits.x, bits.y, bits.z, bits.w}};
}

}  // namespace cuvae
