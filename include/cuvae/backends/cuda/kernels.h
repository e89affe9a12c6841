// Launchers of the fused CUDA kernels in kernels/. Each kernel is a thin loop
// around the shared per-element math of vae_math.h / philox.h; its semantics
// are those of the Backend call of the same name (backend.h), and
// tests/backends/test_backend_ops.cpp checks each against the CPU backend.
//
// All launchers are asynchronous on `on.stream` (or recorded into / replayed
// from the step's CUDA Graph, `on.graph`); pointers are device pointers.
// Reductions use CUB's block and warp reductions, whose order is fixed, so
// the same inputs give the same bits (no atomics).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae {
class StepGraph;
struct CollectedCall;
using CollectedStep = std::vector<CollectedCall>;
}

namespace cuvae::kernels {

// Where a launch goes: the stream, and the step graph being captured or
// replayed, if any; or, while a pack member's step is collected, that
// member's list (nothing is launched then).
struct LaunchTarget {
  cudaStream_t stream = nullptr;
  StepGraph* graph = nullptr;
  CollectedStep* collect = nullptr;
};

// kernels/binarize.cu
// Row r of x is image order[first_position + r] of `images` (or image
// first_position + r when order is null), binarized with uniform element
// uniform_base + r * cols + j of `key`.
void binarize(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
              int cols, uint64_t uniform_base, RandomKey key, float* x, const LaunchTarget& on);
// kernels/fill_normal.cu
void fill_normal(float* out, size_t count, uint64_t first_index, RandomKey key,
                 const LaunchTarget& on);
// kernels/bias_activation.cu
void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                             const LaunchTarget& on);
// `scratch` holds bias_grad_scratch_floats(rows, cols) floats (per-chunk
// column sums, added in a fixed order by a second kernel); row_scale may be
// null (no per-row scaling).
void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                   Activation act, const float* row_scale, float* scratch,
                                   const LaunchTarget& on);
size_t bias_grad_scratch_floats(int rows, int cols);
// kernels/reparameterize_kl.cu (K = samples per image; rows b K + k)
void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images, int samples,
                               int latent, float* z, float* row_kl, float* row_log_ratio,
                               const LaunchTarget& on);
void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int images, int samples, int latent, float kl_scale,
                                float* d_encoder_out, const LaunchTarget& on);
// kernels/bernoulli_logprob.cu
void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                int samples, float grad_scale, float* dlogits, float* row_logprob,
                                const LaunchTarget& on);
void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                     double* accumulator, const LaunchTarget& on);
// kernels/importance_weights.cu
void importance_weights(const float* row_logprob, const float* row_log_ratio, int images,
                        int samples, float* weights, float* row_bound, const LaunchTarget& on);
void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                               const float* group_bound, int images, int groups, int samples,
                               float beta, float* weights, float* row_bound,
                               const LaunchTarget& on);
void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                         const float* eps, const float* z, const float* weights,
                                         int images, int samples, int latent, float scale,
                                         bool dreg, float* d_encoder_out, const LaunchTarget& on);
// kernels/gaussian_layer.cu (stochastic layers above the first; one sample a row)
void gaussian_layer_forward(const float* h_below, const float* p_params,
                            const float* upper_log_ratio, int rows, int latent,
                            float* row_log_ratio, const LaunchTarget& on);
void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights,
                             int rows, int latent, float scale, float* d_params, float* dh_below,
                             const LaunchTarget& on);
void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                           const float* h, const float* weights, int rows, int latent, float scale,
                           bool dreg, float* d_encoder_out, float* d_encoder_out_below,
                           const LaunchTarget& on);
// kernels/adam.cu
void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
               const AdamStep& step, const LaunchTarget& on);

}  // namespace cuvae::kernels
