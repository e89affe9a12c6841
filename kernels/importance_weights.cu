// K importance samples per image: the importance-weighted bound and its
// normalized weights, and the IWAE / DReG backward to the encoder outputs.
//
// References: Burda, Grosse & Salakhutdinov, "Importance Weighted
// Autoencoders", ICLR 2016 (the bound L_K and its gradient); Tucker, Lawson,
// Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
// Objectives", ICLR 2019 (DReG). The per-element math is vae_math.h's, shared
// with the CPU backend (src/backends/cpu/cpu_backend.cpp), the reference.
//
// importance_weights: image b's K log-weights log w_k = row_logprob[b K + k] +
// row_log_ratio[b K + k], with m = max_k log w_k and s = sum_k exp(log w_k - m)
// added in double (5000 float terms would lose ~3 of float's 7 digits):
//   row_bound[b]     = m + log s - log K               (log_mean_exp_from)
//   weights[b K + k] = exp(log w_k - m) / s            (if weights != null)
// Nothing exponentiated is above 1 and the largest term is exactly 1, so
// log-weights spread over hundreds of nats stay finite. Small K (training,
// K <= kWarpSamplesMax): one warp per image, lanes stride over the samples,
// cub::WarpReduce for the max (float) and the sum (double). Large K (the
// evaluation's 5000): one block per image, cub::BlockReduce. Either way a
// fixed tree: the same inputs give the same bits, no atomics, one launch.
//
// importance_weighted_latent_backward: one thread per (image b, latent j),
// with dz'_k = importance_weighted_dz(dz_k, z_k, eps_k, sigma, w~_k, scale, dreg)
// (sigma = exp(log_std_bj), sample k in row b K + k):
//   d mean_bj    = sum_k dz'_k
//   d log_std_bj = sum_k dz'_k sigma eps_k - (dreg ? 0 : scale)
// added in order k = 0..K-1 from the k = 0 term, as the CPU backend does.
// Consecutive threads read consecutive j of the same sample row: coalesced.
//
// grouped_objective_weights (miwae, ciwae, piwae's encoder): in place,
// w~ -> v = grouped_sample_weight(w~, beta, K, M) and row_bound[b] = (1/M)
// sum_m grouped_bound_term(sum_k log w_mk, L_K(m), beta, K); one thread per image.
//
// Tested: tests/backends/test_cuda_iwae.cpp against the CPU backend (K = 1, 3, 50 and
// 5000, log-weights spread over hundreds of nats; IWAE and DReG), skipped
// without a device; the shared math in tests/model/test_vae_math.cpp.
#include <cub/cub.cuh>
#include <cuda/functional>

#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/kernels.h"
#include "launch.cuh"

namespace cuvae::kernels {

namespace {

constexpr int kWarpsPerBlock = kThreads / 32;
// Up to this K, a warp per image (at most 16 samples a lane); above, a block.
constexpr int kWarpSamplesMax = 512;

__device__ float log_weight(const float* logprob, const float* log_ratio, int k) {
  return logprob[k] + log_ratio[k];
}

// One thread's share of an image's samples k = first, first + stride, ...:
// the largest log-weight, then the sum of the shifted weights.
__device__ float partial_max_log_weight(const float* logprob, const float* log_ratio, int samples,
                                        int first, int stride) {
  float max_log_w = -INFINITY;
  for (int k = first; k < samples; k += stride) {
    max_log_w = fmaxf(max_log_w, log_weight(logprob, log_ratio, k));
  }
  return max_log_w;
}

__device__ double partial_shifted_sum(const float* logprob, const float* log_ratio, int samples,
                                      int first, int stride, float max_log_w) {
  double sum = 0.0;
  for (int k = first; k < samples; k += stride) {
    sum += shifted_importance_weight(log_weight(logprob, log_ratio, k), max_log_w);
  }
  return sum;
}

__device__ void write_weights(const float* logprob, const float* log_ratio, int samples, int first,
                              int stride, float max_log_w, double shifted_sum, float* weights) {
  for (int k = first; k < samples; k += stride) {
    weights[k] = static_cast<float>(
        shifted_importance_weight(log_weight(logprob, log_ratio, k), max_log_w) / shifted_sum);
  }
}

__device__ void importance_weights_warp_kernel(const float* __restrict__ row_logprob,
                                               const float* __restrict__ row_log_ratio,
                                               int images, int samples,
                                               float* __restrict__ weights,
                                               float* __restrict__ row_bound) {
  using MaxReduce = cub::WarpReduce<float>;
  using SumReduce = cub::WarpReduce<double>;
  __shared__ typename MaxReduce::TempStorage max_storage[kWarpsPerBlock];
  __shared__ typename SumReduce::TempStorage sum_storage[kWarpsPerBlock];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.x * kWarpsPerBlock + warp;
  if (b >= images) return;  // whole warps leave together
  const size_t first = static_cast<size_t>(b) * samples;
  const float* logprob = row_logprob + first;
  const float* log_ratio = row_log_ratio + first;
  // The reductions' results are lane 0's; every lane needs them.
  float max_log_w = MaxReduce(max_storage[warp])
                        .Reduce(partial_max_log_weight(logprob, log_ratio, samples, lane, 32),
                                ::cuda::maximum<float>{});
  max_log_w = __shfl_sync(0xffffffffu, max_log_w, 0);
  double sum = SumReduce(sum_storage[warp])
                   .Sum(partial_shifted_sum(logprob, log_ratio, samples, lane, 32, max_log_w));
  sum = __shfl_sync(0xffffffffu, sum, 0);
  if (lane == 0) row_bound[b] = static_cast<float>(log_mean_exp_from(max_log_w, sum, samples));
  if (weights != nullptr) {
    write_weights(logprob, log_ratio, samples, lane, 32, max_log_w, sum, weights + first);
  }
}

__device__ void importance_weights_block_kernel(const float* __restrict__ row_logprob,
                                                const float* __restrict__ row_log_ratio,
                                                int samples, float* __restrict__ weights,
                                                float* __restrict__ row_bound) {
  using MaxReduce = cub::BlockReduce<float, kThreads>;
  using SumReduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename MaxReduce::TempStorage max_storage;
  __shared__ typename SumReduce::TempStorage sum_storage;
  __shared__ float image_max;  // thread 0's reduction results, for every thread
  __shared__ double image_sum;
  const int b = blockIdx.x;
  const size_t first = static_cast<size_t>(b) * samples;
  const float* logprob = row_logprob + first;
  const float* log_ratio = row_log_ratio + first;
  const float max_log_w =
      MaxReduce(max_storage)
          .Reduce(partial_max_log_weight(logprob, log_ratio, samples, threadIdx.x, kThreads),
                  ::cuda::maximum<float>{});
  if (threadIdx.x == 0) image_max = max_log_w;
  __syncthreads();
  const double sum = SumReduce(sum_storage)
                         .Sum(partial_shifted_sum(logprob, log_ratio, samples, threadIdx.x,
                                                  kThreads, image_max));
  if (threadIdx.x == 0) {
    image_sum = sum;
    row_bound[b] = static_cast<float>(log_mean_exp_from(image_max, sum, samples));
  }
  __syncthreads();
  if (weights != nullptr) {
    write_weights(logprob, log_ratio, samples, threadIdx.x, kThreads, image_max, image_sum,
                  weights + first);
  }
}

// grouped_objective_weights: one thread per image, each running
// vae_math.h's grouped_objective_image, as the CPU does, so both backends add
// the same doubles in the same order. Training sizes (B images, M K of at most a few
// hundred) make this a small pass next to the decoder's GEMMs.
__device__ void grouped_objective_weights_kernel(const float* __restrict__ row_logprob,
                                                 const float* __restrict__ row_log_ratio,
                                                 const float* __restrict__ group_bound,
                                                 int images, int groups, int samples, float beta,
                                                 float* __restrict__ weights,
                                                 float* __restrict__ row_bound) {
  for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < images; b += gridDim.x * blockDim.x) {
    row_bound[b] = grouped_objective_image(row_logprob, row_log_ratio, group_bound, b, groups, samples, beta, weights);
  }
}

// i = b L + j over images * L < 2^32.
__device__ void importance_weighted_latent_backward_kernel(
    const float* __restrict__ dz, const float* __restrict__ encoder_out,
    const float* __restrict__ eps, const float* __restrict__ z, const float* __restrict__ weights,
    unsigned int count, int samples, unsigned int latent, float scale, bool dreg,
    float* __restrict__ d_encoder_out) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < count;
       i += gridDim.x * blockDim.x) {
    const unsigned int b = i / latent, j = i - b * latent;
    const size_t mean_index = static_cast<size_t>(b) * 2 * latent + j;
    const float sigma = exp_clamped(encoder_out[mean_index + latent]);
    const size_t first_sample = static_cast<size_t>(b) * samples;
    // Sample k's element j: row b K + k of dz, z and eps.
    auto term = [&](int k, float* dlog_std_term) {
      const size_t s = (first_sample + k) * latent + j;
      const float dz_k =
          importance_weighted_dz(dz[s], z[s], eps[s], sigma, weights[first_sample + k], scale, dreg);
      *dlog_std_term = dz_k * sigma * eps[s];
      return dz_k;
    };
    float dlog_std;
    float dmean = term(0, &dlog_std);
    for (int k = 1; k < samples; ++k) {
      float dlog_std_k;
      dmean += term(k, &dlog_std_k);
      dlog_std += dlog_std_k;
    }
    // IWAE: log w's explicit + log_std (from -log q), weighted by sum_k w~_k = 1.
    if (!dreg) dlog_std -= scale;
    d_encoder_out[mean_index] = dmean;
    d_encoder_out[mean_index + latent] = dlog_std;
  }
}

}  // namespace

void importance_weights(const float* row_logprob, const float* row_log_ratio, int images,
                        int samples, float* weights, float* row_bound, const LaunchTarget& on) {
  sample_rows("importance_weights", images, samples);
  if (images == 0) return;
  if (samples <= kWarpSamplesMax) {
    // images / 8 + 1 blocks: within gridDim.x's 2^31 - 1 for any int.
    const unsigned int blocks = static_cast<unsigned int>((images + kWarpsPerBlock - 1) / kWarpsPerBlock);
    launch<importance_weights_warp_kernel>(on, blocks, kThreads, 0, row_logprob, row_log_ratio, images,
           samples, weights, row_bound);
  } else {
    launch<importance_weights_block_kernel>(on, static_cast<unsigned int>(images), kThreads, 0,
           row_logprob, row_log_ratio, samples, weights, row_bound);
  }
}

void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                               const float* group_bound, int images, int groups, int samples,
                               float beta, float* weights, float* row_bound,
                               const LaunchTarget& on) {
  sample_rows("grouped_objective_weights", sample_rows("grouped_objective_weights", images, groups),
              samples);
  if (images == 0) return;
  launch<grouped_objective_weights_kernel>(on, blocks_for(static_cast<size_t>(images)), kThreads, 0,
         row_logprob, row_log_ratio, group_bound, images, groups, samples, beta, weights,
         row_bound);
}

void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                         const float* eps, const float* z, const float* weights,
                                         int images, int samples, int latent, float scale,
                                         bool dreg, float* d_encoder_out, const LaunchTarget& on) {
  sample_rows("importance_weighted_latent_backward", images, samples);
  const size_t count = static_cast<size_t>(images) * latent;
  if (count == 0) return;
  check_32bit_grid_stride("importance_weighted_latent_backward", count);
  launch<importance_weighted_latent_backward_kernel>(on, blocks_for(count), kThreads, 0, dz,
         encoder_out, eps, z, weights, static_cast<unsigned int>(count), samples,
         static_cast<unsigned int>(latent), scale, dreg, d_encoder_out);
}

}  // namespace cuvae::kernels
