// Launchers of the fused CUDA kernels in kernels/. Each kernel is a thin loop
// around the shared per-element math of vae_math.h / philox.h; its semantics
// are those of the Backend call of the same name (backend.h), and
// tests/test_backend_ops.cpp checks each against the CPU backend.
//
// All launchers are asynchronous on `stream`; pointers are device pointers.
// Reductions use CUB's block and warp reductions, whose order is fixed, so
// the same inputs give the same bits (no atomics).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuvae/backend.h"

namespace cuvae::kernels {

// kernels/binarize.cu
void binarize(const uint8_t* pixels, int rows, int cols, uint64_t first_row, RandomKey key,
              float* x, cudaStream_t stream);
// kernels/fill_normal.cu
void fill_normal(float* out, size_t count, uint64_t first_index, RandomKey key,
                 cudaStream_t stream);
// kernels/bias_activation.cu
void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                             cudaStream_t stream);
void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                   Activation act, cudaStream_t stream);
// kernels/reparameterize_kl.cu
void reparameterize_kl_forward(const float* encoder_out, const float* eps, int rows, int latent,
                               float* z, float* row_kl, float* row_log_ratio,
                               cudaStream_t stream);
void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int rows, int latent, float kl_scale, float* d_encoder_out,
                                cudaStream_t stream);
// kernels/bernoulli_logprob.cu
void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                float grad_scale, float* dlogits, float* row_logprob,
                                cudaStream_t stream);
void accumulate_elbo(const float* row_logprob, const float* row_kl, int rows, double* accumulator,
                     cudaStream_t stream);
// kernels/adam.cu
void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
               const AdamStep& step, cudaStream_t stream);

}  // namespace cuvae::kernels
