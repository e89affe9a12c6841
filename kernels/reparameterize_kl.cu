// Reparameterization fused with the KL divergence.
//   forward:  z = mean + exp(log_std) eps;  row_kl[r] = sum_j KL term;
//             row_log_ratio[r] = sum_j log p(z) - log q(z|x)
//   backward: d mean, d log_std from dz and the KL's own gradient
// encoder_out rows are [mean (L) | log_std (L)]. Forward: one warp per row,
// lanes stride over the L latents, cub::WarpReduce adds the per-lane sums in
// a fixed tree. Backward: element-wise.
#include <cub/cub.cuh>

#include "cuvae/cuda_check.h"
#include "cuvae/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

constexpr int kWarpsPerBlock = kThreads / 32;

__global__ void reparameterize_kl_forward_kernel(const float* __restrict__ encoder_out,
                                                 const float* __restrict__ eps, int rows,
                                                 int latent, float* __restrict__ z,
                                                 float* __restrict__ row_kl,
                                                 float* __restrict__ row_log_ratio) {
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage storage[kWarpsPerBlock][2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = blockIdx.x * kWarpsPerBlock + warp;
  if (r >= rows) return;  // whole warps leave together
  const float* mean = encoder_out + static_cast<size_t>(r) * 2 * latent;
  const float* log_std = mean + latent;
  float kl = 0.0f, log_ratio = 0.0f;
  for (int j = lane; j < latent; j += 32) {
    const size_t i = static_cast<size_t>(r) * latent + j;
    const float zj = reparameterize(mean[j], log_std[j], eps[i]);
    z[i] = zj;
    kl += kl_divergence_term(mean[j], log_std[j]);
    log_ratio += log_prior_minus_log_posterior(zj, eps[i], log_std[j]);
  }
  kl = WarpReduce(storage[warp][0]).Sum(kl);
  log_ratio = WarpReduce(storage[warp][1]).Sum(log_ratio);
  if (lane == 0) {
    row_kl[r] = kl;
    if (row_log_ratio != nullptr) row_log_ratio[r] = log_ratio;
  }
}

__global__ void reparameterize_kl_backward_kernel(const float* __restrict__ dz,
                                                  const float* __restrict__ encoder_out,
                                                  const float* __restrict__ eps, long long count,
                                                  int latent, float kl_scale,
                                                  float* __restrict__ d_encoder_out) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = i / latent, j = i % latent;
    const size_t mean_index = static_cast<size_t>(r) * 2 * latent + j;
    cuvae::reparameterize_kl_backward(dz[i], encoder_out[mean_index], encoder_out[mean_index + latent],
                               eps[i], kl_scale, &d_encoder_out[mean_index],
                               &d_encoder_out[mean_index + latent]);
  }
}

void reparameterize_kl_forward(const float* encoder_out, const float* eps, int rows, int latent,
                               float* z, float* row_kl, float* row_log_ratio,
                               const LaunchTarget& on) {
  const unsigned int blocks = static_cast<unsigned int>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  launch(on, reparameterize_kl_forward_kernel, blocks, kThreads, 0, encoder_out, eps, rows, latent,
         z, row_kl, row_log_ratio);
}

void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int rows, int latent, float kl_scale, float* d_encoder_out,
                                const LaunchTarget& on) {
  const long long count = static_cast<long long>(rows) * latent;
  launch(on, reparameterize_kl_backward_kernel, blocks_for(static_cast<size_t>(count)), kThreads, 0,
         dz, encoder_out, eps, count, latent, kl_scale, d_encoder_out);
}

}  // namespace cuvae::kernels
