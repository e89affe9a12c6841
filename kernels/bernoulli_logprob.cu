// The sigmoid-Bernoulli log-likelihood of the decoder's logits fused with its
// gradient, in one pass over the decoder output (rows = images * K sample
// rows; row r's pixels x are those of image r / K):
//   row_logprob[r] = sum_j x f - softplus(f)          (vae_math.h, stable)
//   dlogits[r][j]  = grad_scale * (sigma(f) - x)      (if dlogits != null)
// One block per row: threads stride over the row's pixels (coalesced) and
// cub::BlockReduce adds their partial sums in a fixed order.
// And the ELBO accumulator, one block, in double, so the epoch's sum stays on
// the device between reads:
//   *acc += sum_b ((1/K) sum_k row_logprob[b K + k] - row_kl[b])   (row_kl may be null)
#include <cub/cub.cuh>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

__device__ void bernoulli_logprob_and_grad_kernel(const float* __restrict__ x,
                                                  const float* __restrict__ logits, int cols,
                                                  int samples, float grad_scale, float* __restrict__ dlogits,
                                                  float* __restrict__ row_logprob) {
  using BlockReduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const size_t offset = static_cast<size_t>(blockIdx.x) * cols;
  const float* x_row = x + static_cast<size_t>(blockIdx.x / static_cast<unsigned int>(samples)) * cols;
  float sum = 0.0f;
  for (int c = threadIdx.x; c < cols; c += kThreads) {
    float dlogp;
    sum += cuvae::bernoulli_logprob_and_grad(x_row[c], logits[offset + c], &dlogp);
    if (dlogits != nullptr) dlogits[offset + c] = -grad_scale * dlogp;
  }
  sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) row_logprob[blockIdx.x] = sum;
}

__device__ void accumulate_elbo_kernel(const float* __restrict__ row_logprob,
                                       const float* __restrict__ row_kl, int images,
                                       int samples, double* __restrict__ accumulator) {
  using BlockReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  double sum = 0.0;
  for (int b = threadIdx.x; b < images; b += kThreads) {
    const float* logprob = row_logprob + static_cast<size_t>(b) * samples;
    double image_logprob = 0.0;
    for (int k = 0; k < samples; ++k) image_logprob += static_cast<double>(logprob[k]);
    // (1/K) as a division, as the CPU does: K = 1 adds row_logprob's values exactly.
    sum += image_logprob / samples - (row_kl != nullptr ? static_cast<double>(row_kl[b]) : 0.0);
  }
  sum = BlockReduce(storage).Sum(sum);
  if (threadIdx.x == 0) *accumulator += sum;
}

void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                int samples, float grad_scale, float* dlogits, float* row_logprob,
                                const LaunchTarget& on) {
  // One block per row: rows (an int) is within gridDim.x's 2^31 - 1.
  if (samples < 1 || rows % samples != 0) {
    throw Error("bernoulli_logprob_and_grad: " + std::to_string(rows) + " rows are not whole images of " +
                std::to_string(samples) + " samples");
  }
  if (rows == 0) return;
  launch<bernoulli_logprob_and_grad_kernel>(on, static_cast<unsigned int>(rows), kThreads, 0, x,
         logits, cols, samples, grad_scale, dlogits, row_logprob);
}

void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                     double* accumulator, const LaunchTarget& on) {
  sample_rows("accumulate_elbo", images, samples);
  launch<accumulate_elbo_kernel>(on, 1, kThreads, 0, row_logprob, row_kl, images, samples,
         accumulator);
}

}  // namespace cuvae::kernels
