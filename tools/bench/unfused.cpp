// Unfused passes of the model's fused operations (see unfused.h).
#include "unfused.h"

#include <omp.h>

#include <algorithm>
#include <cassert>
#include <vector>

namespace cuvae::bench::unfused {

namespace {

// The CPU backend's threshold (src/backends/cpu/cpu_backend.cpp): below this many elements
// a loop runs on one thread.
constexpr long kParallelThreshold = 16384;

}  // namespace

void bias_relu_forward(float* y, const float* bias, int rows, int cols) {
  const long n = static_cast<long>(rows) * cols;
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    float* row = y + static_cast<size_t>(r) * cols;
    for (int c = 0; c < cols; ++c) row[c] += bias[c];
  }
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) y[i] = relu(y[i]);
}

void relu_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols) {
  const long n = static_cast<long>(rows) * cols;
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) dy[i] = relu_backward(dy[i], y[i]);
  // Column sums as the backend takes them (by chunks of 32 rows, then the
  // chunks' sums in chunk order: deterministic whatever the thread count),
  // but in a pass of their own.
  constexpr int kChunkRows = 32;
  const int chunks = (rows + kChunkRows - 1) / kChunkRows;
  std::vector<float> chunk_sums(static_cast<size_t>(std::max(chunks, 1)) * cols, 0.0f);  // rows 0: zeros
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int k = 0; k < chunks; ++k) {
    float* sums = chunk_sums.data() + static_cast<size_t>(k) * cols;
    for (int r = k * kChunkRows; r < std::min(rows, (k + 1) * kChunkRows); ++r) {
      const float* drow = dy + static_cast<size_t>(r) * cols;
      for (int c = 0; c < cols; ++c) sums[c] += drow[c];
    }
  }
  std::copy(chunk_sums.begin(), chunk_sums.begin() + cols, dbias);
  for (int k = 1; k < chunks; ++k) {
    for (int c = 0; c < cols; ++c) dbias[c] += chunk_sums[static_cast<size_t>(k) * cols + c];
  }
}

// Pass 1 of the random draws: the raw Philox words of `groups` blocks.
void draw_bits(const RandomKey& key, long first_group, long groups, uint32_t* bits) {
#pragma omp parallel for schedule(static) if (groups * 4 >= kParallelThreshold)
  for (long g = 0; g < groups; ++g) {
    const Philox4 block = random_block(key, static_cast<uint64_t>(first_group + g));
    for (int lane = 0; lane < 4; ++lane) bits[4 * g + lane] = block.v[lane];
  }
}

void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                         const RandomKey& key, uint32_t* bits, float* x) {
  const long n = static_cast<long>(rows) * cols;
  const uint64_t base = first_row * static_cast<uint64_t>(cols);
  assert(base % 4 == 0 && n % 4 == 0);
  const long first_group = static_cast<long>(base / 4);
  const long groups = n / 4;
  draw_bits(key, first_group, groups, bits);
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) x[i] = binarize(host_pixels[i], uniform_from_bits(bits[i]));
}

void fill_normal(float* out, size_t count, uint64_t first_index, const RandomKey& key,
                 uint32_t* bits) {
  const long n = static_cast<long>(count);
  assert(first_index % 4 == 0 && n % 4 == 0);
  const long first_group = static_cast<long>(first_index / 4);
  const long groups = n / 4;
  draw_bits(key, first_group, groups, bits);
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long g = 0; g < groups; ++g) {
    const Philox4 block{{bits[4 * g], bits[4 * g + 1], bits[4 * g + 2], bits[4 * g + 3]}};
    normals_from_block(block, out + 4 * g);
  }
}

void reparameterize_kl_forward(const float* encoder_out, const float* eps, int rows, int latent,
                               float* z, float* kl_elem, float* ratio_elem, float* row_kl,
                               float* row_log_ratio) {
  const long n = static_cast<long>(rows) * latent;
  // encoder_out row r is mean (latent) then log_std (latent).
  const auto mean = [&](int r) { return encoder_out + static_cast<size_t>(r) * 2 * latent; };
  const auto log_std = [&](int r) { return mean(r) + latent; };
  const auto at = [&](float* base, int r) { return base + static_cast<size_t>(r) * latent; };
  const auto at_c = [&](const float* base, int r) {
    return base + static_cast<size_t>(r) * latent;
  };
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float *mu = mean(r), *s = log_std(r), *e = at_c(eps, r);
    float* zr = at(z, r);
    for (int j = 0; j < latent; ++j) zr[j] = reparameterize(mu[j], s[j], e[j]);
  }
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float *mu = mean(r), *s = log_std(r);
    float* k = at(kl_elem, r);
    for (int j = 0; j < latent; ++j) k[j] = kl_divergence_term(mu[j], s[j]);
  }
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float *zr = at_c(z, r), *e = at_c(eps, r), *s = log_std(r);
    float* q = at(ratio_elem, r);
    for (int j = 0; j < latent; ++j) q[j] = log_prior_minus_log_posterior(zr[j], e[j], s[j]);
  }
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float *k = at_c(kl_elem, r), *q = at_c(ratio_elem, r);
    float kl = 0.0f, ratio = 0.0f;
    for (int j = 0; j < latent; ++j) {
      kl += k[j];
      ratio += q[j];
    }
    row_kl[r] = kl;
    row_log_ratio[r] = ratio;
  }
}

void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                int rows, int latent, float kl_scale, float* d_encoder_out) {
  const long n = static_cast<long>(rows) * latent;
  // The two halves of cuvae::reparameterize_kl_backward (vae_math.h), one
  // pass each; the formulas are copied from there, as that function computes
  // both at once.
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float* mean = encoder_out + static_cast<size_t>(r) * 2 * latent;
    const float* d = dz + static_cast<size_t>(r) * latent;
    float* dmean = d_encoder_out + static_cast<size_t>(r) * 2 * latent;
    for (int j = 0; j < latent; ++j) dmean[j] = d[j] + kl_scale * mean[j];
  }
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float* log_std = encoder_out + static_cast<size_t>(r) * 2 * latent + latent;
    const float* d = dz + static_cast<size_t>(r) * latent;
    const float* e = eps + static_cast<size_t>(r) * latent;
    float* dlog_std = d_encoder_out + static_cast<size_t>(r) * 2 * latent + latent;
    for (int j = 0; j < latent; ++j) {
      dlog_std[j] = d[j] * expf(log_std[j]) * e[j] + kl_scale * expm1f(2.0f * log_std[j]);
    }
  }
}

void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                float grad_scale, float* sigma, float* logprob, float* dlogits,
                                float* row_logprob) {
  const long n = static_cast<long>(rows) * cols;
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) sigma[i] = sigmoid(logits[i]);
    // The log-probability alone: the shared function's derivative output is
    // discarded (the compiler drops its computation).
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) {
    float unused;
    logprob[i] = cuvae::bernoulli_logprob_and_grad(x[i], logits[i], &unused);
  }
  // dlogits = -grad_scale * d(log p)/df, d(log p)/df = x - sigma.
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) dlogits[i] = -grad_scale * (x[i] - sigma[i]);
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (int r = 0; r < rows; ++r) {
    const float* lp = logprob + static_cast<size_t>(r) * cols;
    float sum = 0.0f;
    for (int c = 0; c < cols; ++c) sum += lp[c];
    row_logprob[r] = sum;
  }
}

void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
               const AdamStep& s) {
  const long n = static_cast<long>(count);
  // cuvae::adam_step (vae_math.h) split into its three updates.
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) m[i] = s.beta1 * m[i] + s.one_minus_beta1 * grads[i];
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) v[i] = s.beta2 * v[i] + s.one_minus_beta2 * grads[i] * grads[i];
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (long i = 0; i < n; ++i) {
    params[i] -= s.step_size * m[i] / (sqrtf(v[i]) * s.inv_sqrt_bias_correction2 + s.eps);
  }
}

}  // namespace cuvae::bench::unfused
