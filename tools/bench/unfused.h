// The model's fused operations written as separate, unfused passes over
// memory, on the CPU: the same math as the Backend calls (the per-element
// functions of vae_math.h and philox.h wherever they split cleanly), but with
// each step's result written to a buffer and read back by the next pass, as a
// framework without fusion would run it. vae-bench times these against the
// fused CPU backend, so the gain from fusion is a measured ratio.
//
// Each loop is an OpenMP loop with the CPU backend's own rule (one thread
// below 16384 elements), so the comparison is of memory passes, not of
// threading. The comments give the traffic of each pass at minimum (each
// pass reads each of its inputs once and writes each of its outputs once, in
// floats unless stated); vae_bench.cpp counts the same.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuvae/model/philox.h"
#include "cuvae/model/vae_math.h"

namespace cuvae::bench::unfused {

// N = rows * cols below. Two passes: y += bias (2N + cols floats), then
// y = relu(y) (2N).
void bias_relu_forward(float* y, const float* bias, int rows, int cols);

// Two passes: dy = relu_backward(dy, y) (3N), then dbias = column sums of dy
// (N + cols).
void relu_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols);

// Two passes: the Philox blocks' raw bits into `bits` (4N bytes written),
// then x = binarize(pixel, uniform(bits)) (N pixel bytes + 4N read, 4N
// written). first_row * cols and rows * cols must be multiples of 4.
void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                         const RandomKey& key, uint32_t* bits, float* x);

// Two passes: raw bits (4 count bytes written), then Box-Muller per block
// (4 count read, 4 count written). first_index and count multiples of 4.
void fill_normal(float* out, size_t count, uint64_t first_index, const RandomKey& key,
                 uint32_t* bits);

// N = rows * latent. Four passes: z = reparameterize (read mean, log_std,
// eps; write z: 4N), KL per element (read mean, log_std; write: 3N),
// log p(z) - log q(z|x) per element (read z, eps, log_std; write: 4N), then
// the row sums of both (read 2N, write 2 rows). kl_elem and ratio_elem are
// N-float scratch buffers.
void reparameterize_kl_forward(const float* encoder_out, const float* eps, int rows, int latent,
                               float* z, float* kl_elem, float* ratio_elem, float* row_kl,
                               float* row_log_ratio);

// Two passes, one per output half: dmean = dz + kl_scale mean (read dz, mean;
// write: 3N), then dlog_std = dz exp(log_std) eps + kl_scale expm1(2 log_std)
// (read dz, log_std, eps; write: 4N).
void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int rows, int latent, float kl_scale, float* d_encoder_out);

// N = rows * cols. Four passes: sigma = sigmoid(f) into `sigma` (2N), the
// log-probability per element into `logprob` (read x, f; write: 3N), dlogits
// = grad_scale (sigma - x) (3N), then the row sums of logprob (N + rows).
void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                float grad_scale, float* sigma, float* logprob, float* dlogits,
                                float* row_logprob);

// Three passes: m (read m, g; write m: 3n), v (read v, g; write v: 3n), then
// the parameters (read p, m, v; write p: 4n).
void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
               const AdamStep& step);

}  // namespace cuvae::bench::unfused
