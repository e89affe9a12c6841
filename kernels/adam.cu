// Adam over the whole flat parameter buffer in one launch: a grid-stride loop
// around the shared adam_step (vae_math.h). Memory-bound: 16 bytes read and
// 12 written per parameter.
#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__device__ void adam_step_kernel(float* __restrict__ params, const float* __restrict__ grads,
                                 float* __restrict__ m, float* __restrict__ v, size_t count,
                                 AdamStep step) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    cuvae::adam_step(&params[i], &m[i], &v[i], grads[i], step);
  }
}

void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
               const AdamStep& step, const LaunchTarget& on) {
  launch<adam_step_kernel>(on, blocks_for(count), kThreads, 0, params, grads, m, v, count, step);
}

}  // namespace cuvae::kernels
