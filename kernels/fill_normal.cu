// Standard normals by Philox + Box-Muller: element i of the output is normal
// element first_index + i of the key, the same function of (seed, stream,
// step, index) as on the CPU. The raw bits come from cuRAND's Philox4_32_10
// (curand_init + curand4, cuvae/curand_block.h: random_block's bits), the
// Box-Muller transform is philox.h's normals_from_block (not curand_normal4),
// so the device's normals differ from the host's only by sinf/cosf/logf's
// last bits. One thread per block of four.
#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/curand_block.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__device__ void fill_normal_kernel(float* __restrict__ out, unsigned long long count,
                                   unsigned long long first_index, RandomKey key) {
  const unsigned long long first_group = first_index / 4;
  const unsigned long long groups = (first_index + count + 3) / 4 - first_group;
  for (unsigned long long g = blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    float normals[4];
    normals_from_block(curand_random_block(key, first_group + g), normals);
    for (int lane = 0; lane < 4; ++lane) {
      const long long i =
          static_cast<long long>((first_group + g) * 4 + lane) - static_cast<long long>(first_index);
      if (i >= 0 && i < static_cast<long long>(count)) out[i] = normals[lane];
    }
  }
}

void fill_normal(float* out, size_t count, uint64_t first_index, RandomKey key,
                 const LaunchTarget& on) {
  if (count == 0) return;
  launch<fill_normal_kernel>(on, blocks_for(count / 4 + 1), kThreads, 0, out, count, first_index,
         key);
}

}  // namespace cuvae::kernels
