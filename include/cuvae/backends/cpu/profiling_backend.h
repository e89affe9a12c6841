// A Backend decorator that times every call of the backend it wraps, by
// operation, for `vae bench`'s breakdown of a training step (GEMMs against
// everything else). Each call is bracketed by synchronize(), so on a GPU the
// times are exact per operation but the step runs slower than unprofiled:
// throughput is measured without it.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/backend.h"

namespace cuvae {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  // Seconds and calls per operation name ("gemm", "adam_step", ...).
  struct Entry {
    double seconds = 0.0;
    long calls = 0;
  };
  const std::map<std::string, Entry>& totals() const { return totals_; }
  void reset() {
    totals_.clear();
    gemm_shapes_.clear();
  }

  // The shapes of the GEMM calls since reset(), to replay them alone.
  struct GemmShape {
    bool transpose_a, transpose_b;
    int m, n, k;
  };
  const std::vector<GemmShape>& gemm_shapes() const { return gemm_shapes_; }

  std::string name() const override { return inner_.name(); }
  std::string description() const override { return inner_.description(); }
  void* allocate(size_t bytes) override { return inner_.allocate(bytes); }
  void deallocate(void* pointer) override { inner_.deallocate(pointer); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void copy_on_device(void* dst, const void* src, size_t bytes) override;
  void synchronize() override { inner_.synchronize(); }
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override;
  void bias_activation_forward(float* y, const float* bias, int rows, int cols,
                               Activation act) override;
  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                     Activation act, const float* row_scale) override;
  void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                           const RandomKey& key, float* x) override;
  bool set_tf32(bool on) override { return inner_.set_tf32(on); }
  void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
                     int cols, const RandomKey& key, float* x) override;
  void fill_normal(float* out, size_t count, uint64_t first_index, const RandomKey& key) override;
  void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images,
                                 int samples, int latent, float* z, float* row_kl,
                                 float* row_log_ratio) override;
  void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                  int images, int samples, int latent, float kl_scale,
                                  float* d_encoder_out) override;
  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                  int samples, float grad_scale, float* dlogits,
                                  float* row_logprob) override;
  void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                       double* accumulator) override;
  void importance_weights(const float* row_logprob, const float* row_log_ratio, int images,
                          int samples, float* weights, float* row_bound) override;
  void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                                 const float* group_bound, int images, int groups, int samples,
                                 float beta, float* weights, float* row_bound) override;
  void gaussian_layer_forward(const float* h_below, const float* p_params,
                              const float* upper_log_ratio, int rows, int latent,
                              float* row_log_ratio) override;
  void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights,
                               int rows, int latent, float scale, float* d_params,
                               float* dh_below) override;
  void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                             const float* h, const float* weights, int rows, int latent,
                             float scale, bool dreg, float* d_encoder_out,
                             float* d_encoder_out_below) override;
  void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                           const float* eps, const float* z, const float* weights,
                                           int images, int samples, int latent, float scale,
                                           bool dreg, float* d_encoder_out) override;
  // Not forwarded: every call is timed alone, between two synchronize()s,
  // so the profiled step runs all its calls in order on one branch (the
  // CUDA backend refuses a synchronize inside a side branch; forwarding made
  // every profiled two-branch bench throw). begin/end/join_side_branch keep
  // the base's no-ops; the inner backend's two-branch setting is still set,
  // for the unprofiled runs that share it.
  bool set_two_branch(bool on) override { return inner_.set_two_branch(on); }
  void set_adaptive_threads(bool on) override { inner_.set_adaptive_threads(on); }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override;

 private:
  template <typename Call>
  void timed(const char* op, Call&& call);

  Backend& inner_;
  std::map<std::string, Entry> totals_;
  std::vector<GemmShape> gemm_shapes_;
};

}  // namespace cuvae
