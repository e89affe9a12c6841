// Reparameterization fused with the KL divergence, for K samples per image
// (sample k of image b in row b K + k of eps, z and row_log_ratio):
//   forward:  z_bk = mean_b + exp(log_std_b) eps_bk;  row_kl[b] = sum_j KL term;
//             row_log_ratio[b K + k] = sum_j log p(z_bk) - log q(z_bk|x_b)
//   backward: d mean_b    = sum_k dz_bk + kl_scale mean_b
//             d log_std_b = sum_k dz_bk exp(log_std_b) eps_bk + kl_scale expm1(2 log_std_b)
// encoder_out rows are [mean (L) | log_std (L)]. Forward: one warp per sample
// row, lanes stride over the L latents, cub::WarpReduce adds the per-lane
// sums in a fixed tree; the k = 0 row's warp also writes its image's KL
// (unless row_kl is null).
// Backward: one thread per (image, latent), k = 0..K-1 in order, starting
// from the k = 0 term with the KL's gradient (vae_math.h's one-sample
// reparameterize_kl_backward), so K = 1 is that formula's bits; the CPU adds
// the KL's gradient after the K terms instead (a rounding-level difference).
// Tested against the CPU backend in tests/backends/test_backend_ops.cpp and
// tests/backends/test_cuda_iwae.cpp (K = 1, 3, 50).
#include <cub/cub.cuh>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

constexpr int kWarpsPerBlock = kThreads / 32;

__device__ void reparameterize_kl_forward_kernel(const float* __restrict__ encoder_out,
                                                 const float* __restrict__ eps, int rows,
                                                 int samples, int latent, float* __restrict__ z,
                                                 float* __restrict__ row_kl,
                                                 float* __restrict__ row_log_ratio) {
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage storage[kWarpsPerBlock][2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = blockIdx.x * kWarpsPerBlock + warp;
  if (r >= rows) return;  // whole warps leave together
  const int b = r / samples;
  // The image's k = 0 row writes its KL (warp-uniform). A null row_kl is "not
  // wanted", as the CPU backend treats it.
  const bool writes_kl = r - b * samples == 0 && row_kl != nullptr;
  const float* mean = encoder_out + static_cast<size_t>(b) * 2 * latent;
  const float* log_std = mean + latent;
  float kl = 0.0f, log_ratio = 0.0f;
  for (int j = lane; j < latent; j += 32) {
    const size_t i = static_cast<size_t>(r) * latent + j;
    const float zj = reparameterize(mean[j], log_std[j], eps[i]);
    z[i] = zj;
    if (writes_kl) kl += kl_divergence_term(mean[j], log_std[j]);
    log_ratio += log_prior_minus_log_posterior(zj, eps[i], log_std[j]);
  }
  if (writes_kl) {
    kl = WarpReduce(storage[warp][0]).Sum(kl);
    if (lane == 0) row_kl[b] = kl;
  }
  if (row_log_ratio != nullptr) {
    log_ratio = WarpReduce(storage[warp][1]).Sum(log_ratio);
    if (lane == 0) row_log_ratio[r] = log_ratio;
  }
}

// One thread per (image b, latent j): i = b L + j over images * L < 2^32.
__device__ void reparameterize_kl_backward_kernel(const float* __restrict__ dz,
                                                  const float* __restrict__ encoder_out,
                                                  const float* __restrict__ eps,
                                                  unsigned int count, int samples,
                                                  unsigned int latent, float kl_scale,
                                                  float* __restrict__ d_encoder_out) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    const unsigned int b = i / latent, j = i - b * latent;
    const size_t mean_index = static_cast<size_t>(b) * 2 * latent + j;
    const float mean = encoder_out[mean_index], log_std = encoder_out[mean_index + latent];
    // Sample k's element j: row b K + k of dz and eps.
    const size_t first = static_cast<size_t>(b) * samples * latent + j;
    float dmean, dlog_std;
    cuvae::reparameterize_kl_backward(dz[first], mean, log_std, eps[first], kl_scale, &dmean,
                                      &dlog_std);
    const float sigma = exp_clamped(log_std);
    for (int k = 1; k < samples; ++k) {
      const size_t s = first + static_cast<size_t>(k) * latent;
      dmean += dz[s];
      dlog_std += dz[s] * sigma * eps[s];
    }
    d_encoder_out[mean_index] = dmean;
    d_encoder_out[mean_index + latent] = dlog_std;
  }
}

void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images, int samples,
                               int latent, float* z, float* row_kl, float* row_log_ratio,
                               const LaunchTarget& on) {
  const int rows = sample_rows("reparameterize_kl_forward", images, samples);
  if (rows == 0) return;
  const unsigned int blocks = static_cast<unsigned int>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  launch<reparameterize_kl_forward_kernel>(on, blocks, kThreads, 0, encoder_out, eps, rows, samples,
         latent, z, row_kl, row_log_ratio);
}

void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int images, int samples, int latent, float kl_scale,
                                float* d_encoder_out, const LaunchTarget& on) {
  sample_rows("reparameterize_kl_backward", images, samples);
  const size_t count = static_cast<size_t>(images) * latent;
  if (count == 0) return;
  check_32bit_grid_stride("reparameterize_kl_backward", count);
  launch<reparameterize_kl_backward_kernel>(on, blocks_for(count), kThreads, 0, dz, encoder_out, eps,
         static_cast<unsigned int>(count), samples, static_cast<unsigned int>(latent), kl_scale,
         d_encoder_out);
}

}  // namespace cuvae::kernels
