#include "cuvae/backends/cpu/profiling_backend.h"

#include <chrono>

namespace cuvae {

template <typename Call>
void ProfilingBackend::timed(const char* op, Call&& call) {
  inner_.synchronize();
  const auto start = std::chrono::steady_clock::now();
  call();
  inner_.synchronize();
  Entry& entry = totals_[op];
  entry.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++entry.calls;
}

void ProfilingBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  timed("copy", [&] { inner_.copy_to_device(dst, src, bytes); });
}
void ProfilingBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  timed("copy", [&] { inner_.copy_to_host(dst, src, bytes); });
}
void ProfilingBackend::copy_on_device(void* dst, const void* src, size_t bytes) {
  timed("copy", [&] { inner_.copy_on_device(dst, src, bytes); });
}
void ProfilingBackend::gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  gemm_shapes_.push_back({ta, tb, m, n, k});
  timed("gemm", [&] { inner_.gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); });
}
void ProfilingBackend::bias_activation_forward(float* y, const float* bias, int rows, int cols,
                                               Activation act) {
  timed("bias_activation_forward", [&] { inner_.bias_activation_forward(y, bias, rows, cols, act); });
}
void ProfilingBackend::activation_backward_bias_grad(float* dy, const float* y, float* dbias,
                                                     int rows, int cols, Activation act,
                                                     const float* row_scale) {
  timed("activation_backward_bias_grad",
        [&] { inner_.activation_backward_bias_grad(dy, y, dbias, rows, cols, act, row_scale); });
}
void ProfilingBackend::upload_and_binarize(const uint8_t* host_pixels, int rows, int cols,
                                           uint64_t first_row, const RandomKey& key, float* x) {
  timed("upload_and_binarize",
        [&] { inner_.upload_and_binarize(host_pixels, rows, cols, first_row, key, x); });
}
void ProfilingBackend::binarize_rows(const uint8_t* images, const uint32_t* order,
                                     uint64_t first_position, int rows, int cols,
                                     const RandomKey& key, float* x) {
  timed("binarize_rows",
        [&] { inner_.binarize_rows(images, order, first_position, rows, cols, key, x); });
}
void ProfilingBackend::fill_normal(float* out, size_t count, uint64_t first_index,
                                   const RandomKey& key) {
  timed("fill_normal", [&] { inner_.fill_normal(out, count, first_index, key); });
}
void ProfilingBackend::reparameterize_kl_forward(const float* encoder_out, const float* eps,
                                                 int images, int samples, int latent, float* z,
                                                 float* row_kl, float* row_log_ratio) {
  timed("reparameterize_kl_forward", [&] {
    inner_.reparameterize_kl_forward(encoder_out, eps, images, samples, latent, z, row_kl, row_log_ratio);
  });
}
void ProfilingBackend::reparameterize_kl_backward(const float* dz, const float* encoder_out,
                                                  const float* eps, int images, int samples,
                                                  int latent, float kl_scale, float* d_encoder_out) {
  timed("reparameterize_kl_backward", [&] {
    inner_.reparameterize_kl_backward(dz, encoder_out, eps, images, samples, latent, kl_scale,
                                      d_encoder_out);
  });
}
void ProfilingBackend::bernoulli_logprob_and_grad(const float* x, const float* logits, int rows,
                                                  int cols, int samples, float grad_scale,
                                                  float* dlogits, float* row_logprob) {
  timed("bernoulli_logprob_and_grad", [&] {
    inner_.bernoulli_logprob_and_grad(x, logits, rows, cols, samples, grad_scale, dlogits, row_logprob);
  });
}
void ProfilingBackend::accumulate_elbo(const float* row_logprob, const float* row_kl, int images,
                                       int samples, double* accumulator) {
  timed("accumulate_elbo",
        [&] { inner_.accumulate_elbo(row_logprob, row_kl, images, samples, accumulator); });
}
void ProfilingBackend::importance_weights(const float* row_logprob, const float* row_log_ratio,
                                          int images, int samples, float* weights,
                                          float* row_bound) {
  timed("importance_weights", [&] {
    inner_.importance_weights(row_logprob, row_log_ratio, images, samples, weights, row_bound);
  });
}
void ProfilingBackend::grouped_objective_weights(const float* row_logprob,
                                                 const float* row_log_ratio,
                                                 const float* group_bound, int images, int groups,
                                                 int samples, float beta, float* weights,
                                                 float* row_bound) {
  timed("grouped_objective_weights", [&] {
    inner_.grouped_objective_weights(row_logprob, row_log_ratio, group_bound, images, groups,
                                     samples, beta, weights, row_bound);
  });
}
void ProfilingBackend::importance_weighted_latent_backward(
    const float* dz, const float* encoder_out, const float* eps, const float* z,
    const float* weights, int images, int samples, int latent, float scale, bool dreg,
    float* d_encoder_out) {
  timed("importance_weighted_latent_backward", [&] {
    inner_.importance_weighted_latent_backward(dz, encoder_out, eps, z, weights, images, samples,
                                               latent, scale, dreg, d_encoder_out);
  });
}
void ProfilingBackend::gaussian_layer_forward(const float* h_below, const float* p_params,
                                              const float* upper_log_ratio, int rows, int latent,
                                              float* row_log_ratio) {
  timed("gaussian_layer_forward", [&] {
    inner_.gaussian_layer_forward(h_below, p_params, upper_log_ratio, rows, latent, row_log_ratio);
  });
}
void ProfilingBackend::gaussian_layer_backward(const float* h_below, const float* p_params,
                                               const float* weights, int rows, int latent,
                                               float scale, float* d_params, float* dh_below) {
  timed("gaussian_layer_backward", [&] {
    inner_.gaussian_layer_backward(h_below, p_params, weights, rows, latent, scale, d_params, dh_below);
  });
}
void ProfilingBackend::upper_latent_backward(const float* dh, const float* encoder_out,
                                             const float* eps, const float* h,
                                             const float* weights, int rows, int latent,
                                             float scale, bool dreg, float* d_encoder_out,
                                             float* d_encoder_out_below) {
  timed("upper_latent_backward", [&] {
    inner_.upper_latent_backward(dh, encoder_out, eps, h, weights, rows, latent, scale, dreg,
                                 d_encoder_out, d_encoder_out_below);
  });
}
void ProfilingBackend::adam_step(float* params, const float* grads, float* m, float* v,
                                 size_t count, const AdamStep& step) {
  timed("adam_step", [&] { inner_.adam_step(params, grads, m, v, count, step); });
}

}  // namespace cuvae
