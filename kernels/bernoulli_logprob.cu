// The sigmoid-Bernoulli log-likelihood of the decoder's logits fused with its
// gradient, in one pass over the decoder output:
//   row_logprob[r] = sum_j x f - softplus(f)          (vae_math.h, stable)
//   dlogits[r][j]  = grad_scale * (sigma(f) - x)      (if dlogits != null)
// One block per row: threads stride over the row's pixels (coalesced) and
// cub::BlockReduce adds their partial sums in a fixed order.
// And the ELBO accumulator: *acc += sum_r (row_logprob[r] - row_kl[r]), one
// block, in double, so the epoch's sum stays on the device between reads.
#include <cub/cub.cuh>

#include "cuvae/cuda_check.h"
#include "cuvae/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__global__ void bernoulli_logprob_and_grad_kernel(const float* __restrict__ x,
                                                  const float* __restrict__ logits, int cols,
                                                  float grad_scale, float* __restrict__ dlogits,
                                                  float* __restrict__ row_logprob) {
  using BlockReduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const size_t offset = static_cast<size_t>(blockIdx.x) * cols;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    float dlogp;
    sum += cuvae::bernoulli_logprob_and_grad(x[offset + c], logits[offset + c], &dlogp);
    if (dlogits != nullptr) dlogits[offset + c] = -grad_scale * dlogp;
  }
  sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) row_logprob[blockIdx.x] = sum;
}

__global__ void accumulate_elbo_kernel(const float* __restrict__ row_logprob,
                                       const float* __restrict__ row_kl, int rows,
                                       double* __restrict__ accumulator) {
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  double sum = 0.0;
  for (int r = threadIdx.x; r < rows; r += kThreads) {
    sum += static_cast<double>(row_logprob[r]) - static_cast<double>(row_kl[r]);
  }
  sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) *accumulator += sum;
}

void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                float grad_scale, float* dlogits, float* row_logprob,
                                const LaunchTarget& on) {
  launch(on, bernoulli_logprob_and_grad_kernel, static_cast<unsigned int>(rows), kThreads, 0, x,
         logits, cols, grad_scale, dlogits, row_logprob);
}

void accumulate_elbo(const float* row_logprob, const float* row_kl, int rows, double* accumulator,
                     const LaunchTarget& on) {
  launch(on, accumulate_elbo_kernel, 1, kThreads, 0, row_logprob, row_kl, rows, accumulator);
}

}  // namespace cuvae::kernels
