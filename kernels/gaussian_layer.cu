// The stochastic layers above the first (the IWAE paper's two-layer model):
// layer s's terms of log w, their backward, and the backward of the layer's
// reparameterization. Every row is one sample with its own weight.
//
//   gaussian_layer_forward:  row_log_ratio[r] += upper_log_ratio[r] +
//                            sum_j gaussian_log_ratio_term(h_rj, m_rj, l_rj)
//     (log N(h; m, e^2l) - log N(h; 0, 1): p(h_{s-1}|h_s) against the standard
//     normal that layer s - 1's reparameterization counted). One warp per row,
//     lanes stride over the L latents, cub::WarpReduce in a fixed tree.
//   gaussian_layer_backward: d_params = [dloss/dm | dloss/dl], dh_below +=
//     dloss/dh, gaussian_log_ratio_backward with g = scale weights[r]; one
//     thread per (row, latent), no atomics (each element has one writer).
//   upper_latent_backward:   d_encoder_out (and, if not null,
//     d_encoder_out_below with dreg false) from upper_latent_backward_term;
//     one thread per (row, latent).
// The math is vae_math.h's, shared with the CPU backend
// (src/backends/cpu/cpu_backend.cpp), the reference; tests/backends/
// test_backend_ops.cpp checks each op on every backend against it and
// against finite differences, tests/backends/test_cuda_vs_cpu.cpp the
// two-layer model's step.
#include <cub/cub.cuh>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

__device__ void gaussian_layer_forward_kernel(const float* __restrict__ h_below,
                                              const float* __restrict__ p_params,
                                              const float* __restrict__ upper_log_ratio, int rows,
                                              int latent, float* __restrict__ row_log_ratio) {
  using WarpReduce = cub::WarpReduce<float>;
  __shared__ typename WarpReduce::TempStorage storage[kWarpsPerBlock];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = blockIdx.x * kWarpsPerBlock + warp;
  if (r >= rows) return;  // whole warps leave together
  const float* h = h_below + static_cast<size_t>(r) * latent;
  const float* mean = p_params + static_cast<size_t>(r) * 2 * latent;
  float sum = 0.0f;
  for (int j = lane; j < latent; j += 32) sum += gaussian_log_ratio_term(h[j], mean[j], mean[latent + j]);
  sum = WarpReduce(storage[warp]).Sum(sum);
  if (lane == 0) row_log_ratio[r] += upper_log_ratio[r] + sum;
}

// i = r L + j over rows * L < 2^32.
__device__ void gaussian_layer_backward_kernel(const float* __restrict__ h_below,
                                               const float* __restrict__ p_params,
                                               const float* __restrict__ weights,
                                               unsigned int count, unsigned int latent,
                                               float scale, float* __restrict__ d_params,
                                               float* __restrict__ dh_below) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    const unsigned int r = i / latent, j = i - r * latent;
    const size_t mean_index = static_cast<size_t>(r) * 2 * latent + j;
    float dmean, dlog_std, dh;
    gaussian_log_ratio_backward(h_below[i], p_params[mean_index], p_params[mean_index + latent],
                                scale * weights[r], &dmean, &dlog_std, &dh);
    d_params[mean_index] = dmean;
    d_params[mean_index + latent] = dlog_std;
    if (dh_below != nullptr) dh_below[i] += dh;
  }
}

// i = r L + j over rows * L < 2^32.
__device__ void upper_latent_backward_kernel(const float* __restrict__ dh,
                                             const float* __restrict__ encoder_out,
                                             const float* __restrict__ eps,
                                             const float* __restrict__ h,
                                             const float* __restrict__ weights, unsigned int count,
                                             unsigned int latent, float scale, bool dreg,
                                             float* __restrict__ d_encoder_out,
                                             float* __restrict__ d_encoder_out_below) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    const unsigned int r = i / latent, j = i - r * latent;
    const size_t mean_index = static_cast<size_t>(r) * 2 * latent + j;
    const float log_std = encoder_out[mean_index + latent];
    float dmean, dlog_std;
    upper_latent_backward_term(dh[i], h[i], eps[i], log_std, weights[r], scale, dreg, &dmean,
                               &dlog_std);
    d_encoder_out[mean_index] = dmean;
    d_encoder_out[mean_index + latent] = dlog_std;
    if (d_encoder_out_below != nullptr) {
      upper_latent_backward_term(dh[i], h[i], eps[i], log_std, weights[r], scale, false, &dmean,
                                 &dlog_std);
      d_encoder_out_below[mean_index] = dmean;
      d_encoder_out_below[mean_index + latent] = dlog_std;
    }
  }
}

size_t element_count(const char* what, int rows, int latent) {
  if (rows < 0 || latent < 1) {
    throw Error(std::string(what) + ": " + std::to_string(rows) + " rows x " +
                std::to_string(latent) + " latents");
  }
  const size_t count = static_cast<size_t>(rows) * latent;
  check_32bit_grid_stride(what, count);
  return count;
}

}  // namespace

void gaussian_layer_forward(const float* h_below, const float* p_params,
                            const float* upper_log_ratio, int rows, int latent,
                            float* row_log_ratio, const LaunchTarget& on) {
  if (element_count("gaussian_layer_forward", rows, latent) == 0) return;
  const unsigned int blocks = static_cast<unsigned int>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  launch<gaussian_layer_forward_kernel>(on, blocks, kThreads, 0, h_below, p_params,
         upper_log_ratio, rows, latent, row_log_ratio);
}

void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights,
                             int rows, int latent, float scale, float* d_params, float* dh_below,
                             const LaunchTarget& on) {
  const size_t count = element_count("gaussian_layer_backward", rows, latent);
  if (count == 0) return;
  launch<gaussian_layer_backward_kernel>(on, blocks_for(count), kThreads, 0, h_below, p_params,
         weights, static_cast<unsigned int>(count), static_cast<unsigned int>(latent), scale,
         d_params, dh_below);
}

void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                           const float* h, const float* weights, int rows, int latent, float scale,
                           bool dreg, float* d_encoder_out, float* d_encoder_out_below,
                           const LaunchTarget& on) {
  const size_t count = element_count("upper_latent_backward", rows, latent);
  if (count == 0) return;
  launch<upper_latent_backward_kernel>(on, blocks_for(count), kThreads, 0, dh, encoder_out, eps, h,
         weights, static_cast<unsigned int>(count), static_cast<unsigned int>(latent), scale, dreg,
         d_encoder_out, d_encoder_out_below);
}

}  // namespace cuvae::kernels
