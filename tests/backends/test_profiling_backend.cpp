// ProfilingBackend (vae bench's per-operation breakdown) over a backend that
// runs two branches: it must time every call alone, so it keeps the step on
// one branch. The inner backend here is the CPU backend behind a decorator
// that behaves as the CUDA backend does with set_two_branch(true): it accepts
// the side-branch calls and refuses synchronize() inside a side branch. It
// runs everywhere, so the defect that made every profiled two-branch
// `vae bench --device cuda` throw shows without a GPU.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/backends/cpu/profiling_backend.h"
#include "cuvae/error.h"
#include "cuvae/io/idx.h"
#include "cuvae/model/trainer.h"

namespace cuvae {
namespace {

// The CPU backend with the CUDA backend's side-branch rules.
class TwoBranchRules final : public Backend {
 public:
  TwoBranchRules() : inner_(make_cpu_backend()) {}
  int side_branches_opened = 0;

  std::string name() const override { return inner_->name(); }
  std::string description() const override { return inner_->description(); }
  bool memory_is_host() const override { return inner_->memory_is_host(); }
  void* allocate(size_t bytes) override { return inner_->allocate(bytes); }
  void deallocate(void* pointer) override { inner_->deallocate(pointer); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override { inner_->copy_to_device(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { inner_->copy_to_host(dst, src, bytes); }
  void copy_on_device(void* dst, const void* src, size_t bytes) override { inner_->copy_on_device(dst, src, bytes); }
  void synchronize() override {
    if (in_side_) throw Error("synchronize inside a side branch");
    inner_->synchronize();
  }
  void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
            float beta, float* c, int ldc) override {
    inner_->gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act) override {
    inner_->bias_activation_forward(y, bias, rows, cols, act);
  }
  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols, Activation act,
                                     const float* row_scale) override {
    inner_->activation_backward_bias_grad(dy, y, dbias, rows, cols, act, row_scale);
  }
  void upload_and_binarize(const uint8_t* pixels, int rows, int cols, uint64_t first_row, const RandomKey& key,
                           float* x) override {
    inner_->upload_and_binarize(pixels, rows, cols, first_row, key, x);
  }
  void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first, int rows, int cols,
                     const RandomKey& key, float* x) override {
    inner_->binarize_rows(images, order, first, rows, cols, key, x);
  }
  void fill_normal(float* out, size_t count, uint64_t first_index, const RandomKey& key) override {
    inner_->fill_normal(out, count, first_index, key);
  }
  void reparameterize_kl_forward(const float* enc, const float* eps, int images, int samples, int latent, float* z,
                                 float* row_kl, float* row_log_ratio) override {
    inner_->reparameterize_kl_forward(enc, eps, images, samples, latent, z, row_kl, row_log_ratio);
  }
  void reparameterize_kl_backward(const float* dz, const float* enc, const float* eps, int images, int samples,
                                  int latent, float kl_scale, float* d_enc) override {
    inner_->reparameterize_kl_backward(dz, enc, eps, images, samples, latent, kl_scale, d_enc);
  }
  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols, int samples,
                                  float grad_scale, float* dlogits, float* row_logprob) override {
    inner_->bernoulli_logprob_and_grad(x, logits, rows, cols, samples, grad_scale, dlogits, row_logprob);
  }
  void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                       double* accumulator) override {
    inner_->accumulate_elbo(row_logprob, row_kl, images, samples, accumulator);
  }
  void importance_weights(const float* row_logprob, const float* row_log_ratio, int images, int samples,
                          float* weights, float* row_bound) override {
    inner_->importance_weights(row_logprob, row_log_ratio, images, samples, weights, row_bound);
  }
  void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio, const float* group_bound,
                                 int images, int groups, int samples, float beta, float* weights,
                                 float* row_bound) override {
    inner_->grouped_objective_weights(row_logprob, row_log_ratio, group_bound, images, groups, samples, beta, weights,
                                      row_bound);
  }
  void importance_weighted_latent_backward(const float* dz, const float* enc, const float* eps, const float* z,
                                           const float* weights, int images, int samples, int latent, float scale,
                                           bool dreg, float* d_enc) override {
    inner_->importance_weighted_latent_backward(dz, enc, eps, z, weights, images, samples, latent, scale, dreg,
                                                d_enc);
  }
  void gaussian_layer_forward(const float* h_below, const float* p_params, const float* upper_log_ratio, int rows,
                              int latent, float* row_log_ratio) override {
    inner_->gaussian_layer_forward(h_below, p_params, upper_log_ratio, rows, latent, row_log_ratio);
  }
  void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights, int rows, int latent,
                               float scale, float* d_params, float* dh_below) override {
    inner_->gaussian_layer_backward(h_below, p_params, weights, rows, latent, scale, d_params, dh_below);
  }
  void upper_latent_backward(const float* dh, const float* enc, const float* eps, const float* h,
                             const float* weights, int rows, int latent, float scale, bool dreg, float* d_enc,
                             float* d_enc_below) override {
    inner_->upper_latent_backward(dh, enc, eps, h, weights, rows, latent, scale, dreg, d_enc, d_enc_below);
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override {
    inner_->adam_step(params, grads, m, v, count, step);
  }
  void begin_side_branch() override {
    if (in_side_) throw Error("a side branch inside a side branch");
    in_side_ = true;
    ++side_branches_opened;
  }
  void end_side_branch() override { in_side_ = false; }
  bool set_two_branch(bool on) override { return on; }

 private:
  std::unique_ptr<Backend> inner_;
  bool in_side_ = false;
};

IdxImages patterned_images(int count) {
  IdxImages images;
  images.count = count;
  images.rows = 28;
  images.cols = 28;
  images.pixels.resize(static_cast<size_t>(count) * 784);
  for (size_t i = 0; i < images.pixels.size(); ++i) images.pixels[i] = static_cast<uint8_t>((i * 37) % 256);
  return images;
}

TrainConfig tiny_config() {
  TrainConfig config;
  config.arch.hidden = {16, 16};
  config.arch.latent_dim = 4;
  config.batch_size = 20;
  return config;
}

// The decorator's rules hold for the model's own two-branch step: it forks
// side branches and never synchronizes inside one.
TEST(ProfilingBackend, TheRulesAcceptTheModelsTwoBranchStep) {
  TwoBranchRules rules;
  ASSERT_TRUE(rules.set_two_branch(true));
  const IdxImages images = patterned_images(100);  // the trainer keeps a reference
  Trainer trainer(rules, tiny_config(), images);
  for (int s = 0; s < 3; ++s) trainer.step();
  rules.synchronize();
  EXPECT_GT(rules.side_branches_opened, 0);
}

// Profiled, the same step runs on one branch: no synchronize inside a side
// branch, and the breakdown has every operation.
TEST(ProfilingBackend, ProfiledTwoBranchStepRunsOnOneBranch) {
  TwoBranchRules rules;
  ProfilingBackend profiler(rules);
  ASSERT_TRUE(profiler.set_two_branch(true));
  const IdxImages images = patterned_images(100);  // the trainer keeps a reference
  Trainer trainer(profiler, tiny_config(), images);
  EXPECT_NO_THROW(for (int s = 0; s < 3; ++s) trainer.step());
  EXPECT_EQ(rules.side_branches_opened, 0);
  EXPECT_GT(profiler.totals().at("gemm").calls, 0);
  EXPECT_GT(profiler.totals().at("adam_step").calls, 0);
}

}  // namespace
}  // namespace cuvae
