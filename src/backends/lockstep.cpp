// A pack's models in lock step on one backend (include/cuvae/backends/lockstep.h).
#include "cuvae/backends/lockstep.h"

#include <algorithm>
#include <string>
#include <utility>

#include "cuvae/error.h"

namespace cuvae {

// Member i's view of the shared backend. Outside a step every call runs at
// once on the shared backend, one member at a time. Inside run_step the
// step is collected: by the backend's StepBatch (the calls go to the shared
// backend while it collects), or as closures replayed interleaved.
class MemberBackend final : public Backend {
 public:
  MemberBackend(LockstepPack& pack, int member) : pack_(pack), member_(member) {}

  std::string name() const override { return pack_.shared_->name(); }
  std::string description() const override {
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    return pack_.shared_->description();
  }
  bool memory_is_host() const override { return pack_.shared_->memory_is_host(); }
  size_t memory_bytes() const override {
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    return pack_.shared_->memory_bytes();
  }

  // Also inside a collected step (a model allocates some buffers at their
  // first use): an allocation runs at once, in no order with the calls.
  void* allocate(size_t bytes) override {
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    return pack_.shared_->allocate(bytes);
  }
  void deallocate(void* pointer) override { now([&](Backend& b) { b.deallocate(pointer); }); }
  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    now([&](Backend& b) { b.copy_to_device(dst, host_src, bytes); });
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    now([&](Backend& b) { b.copy_to_host(host_dst, src, bytes); });
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    step_call([=](Backend& b) { b.copy_on_device(dst, src, bytes); });
  }
  void synchronize() override { now([](Backend& b) { b.synchronize(); }); }

  void gemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) override {
    step_call([=](Backend& be) { be.gemm(transpose_a, transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); });
  }
  void bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act) override {
    step_call([=](Backend& b) { b.bias_activation_forward(y, bias, rows, cols, act); });
  }
  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols, Activation act,
                                     const float* row_scale) override {
    step_call([=](Backend& b) { b.activation_backward_bias_grad(dy, y, dbias, rows, cols, act, row_scale); });
  }
  void dense_forward(const float* x, const float* w, const float* b, int rows, int in, int out, Activation act,
                     float* y, void* mask) override {
    step_call([=](Backend& be) { be.dense_forward(x, w, b, rows, in, out, act, y, mask); });
  }
  void dense_backward_input(const float* da, const float* w, int rows, int in, int out, const float* x,
                            const void* x_mask, Activation x_act, float* dx, float* x_dbias) override {
    step_call([=](Backend& b) { b.dense_backward_input(da, w, rows, in, out, x, x_mask, x_act, dx, x_dbias); });
  }
  size_t activation_mask_bytes(int rows, int cols) const override {
    return pack_.shared_->activation_mask_bytes(rows, cols);
  }

  void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                           const RandomKey& key, float* x) override {
    // A member whose images did not fit the device streams its batches and
    // steps without run_step, its calls one at a time: it takes no part in
    // the rounds (until the next epoch's enter), so the others do not wait
    // for it. Reads host memory the caller may reuse at once: never collected.
    pack_.leave(member_);
    now([&](Backend& b) { b.upload_and_binarize(host_pixels, rows, cols, first_row, key, x); });
  }
  void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows, int cols,
                     const RandomKey& key, float* x) override {
    step_call([=](Backend& b) { b.binarize_rows(images, order, first_position, rows, cols, key, x); });
  }
  void fill_normal(float* out, size_t count, uint64_t first_index, const RandomKey& key) override {
    step_call([=](Backend& b) { b.fill_normal(out, count, first_index, key); });
  }
  void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images, int samples, int latent,
                                 float* z, float* row_kl, float* row_log_ratio) override {
    step_call([=](Backend& b) {
      b.reparameterize_kl_forward(encoder_out, eps, images, samples, latent, z, row_kl, row_log_ratio);
    });
  }
  void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps, int images,
                                  int samples, int latent, float kl_scale, float* d_encoder_out) override {
    step_call([=](Backend& b) {
      b.reparameterize_kl_backward(dz, encoder_out, eps, images, samples, latent, kl_scale, d_encoder_out);
    });
  }
  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols, int samples,
                                  float grad_scale, float* dlogits, float* row_logprob) override {
    step_call([=](Backend& b) {
      b.bernoulli_logprob_and_grad(x, logits, rows, cols, samples, grad_scale, dlogits, row_logprob);
    });
  }
  void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                       double* accumulator) override {
    step_call([=](Backend& b) { b.accumulate_elbo(row_logprob, row_kl, images, samples, accumulator); });
  }
  void importance_weights(const float* row_logprob, const float* row_log_ratio, int images, int samples,
                          float* weights, float* row_bound) override {
    step_call([=](Backend& b) { b.importance_weights(row_logprob, row_log_ratio, images, samples, weights, row_bound); });
  }
  void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio, const float* group_bound,
                                 int images, int groups, int samples, float beta, float* weights,
                                 float* row_bound) override {
    step_call([=](Backend& b) {
      b.grouped_objective_weights(row_logprob, row_log_ratio, group_bound, images, groups, samples, beta, weights,
                                  row_bound);
    });
  }
  void importance_weighted_latent_backward(const float* dz, const float* encoder_out, const float* eps,
                                           const float* z, const float* weights, int images, int samples,
                                           int latent, float scale, bool dreg, float* d_encoder_out) override {
    step_call([=](Backend& b) {
      b.importance_weighted_latent_backward(dz, encoder_out, eps, z, weights, images, samples, latent, scale, dreg,
                                            d_encoder_out);
    });
  }
  void gaussian_layer_forward(const float* h_below, const float* p_params, const float* upper_log_ratio, int rows,
                              int latent, float* row_log_ratio) override {
    step_call([=](Backend& b) { b.gaussian_layer_forward(h_below, p_params, upper_log_ratio, rows, latent, row_log_ratio); });
  }
  void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights, int rows,
                               int latent, float scale, float* d_params, float* dh_below) override {
    step_call([=](Backend& b) {
      b.gaussian_layer_backward(h_below, p_params, weights, rows, latent, scale, d_params, dh_below);
    });
  }
  void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps, const float* h,
                             const float* weights, int rows, int latent, float scale, bool dreg,
                             float* d_encoder_out, float* d_encoder_out_below) override {
    step_call([=](Backend& b) {
      b.upper_latent_backward(dh, encoder_out, eps, h, weights, rows, latent, scale, dreg, d_encoder_out,
                              d_encoder_out_below);
    });
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override {
    step_call([=](Backend& b) { b.adam_step(params, grads, m, v, count, step); });
  }

  // The trainer's recording only says that its steps are recorded: the
  // pack's step graph is the StepBatch's.
  std::unique_ptr<StepRecording> make_step_recording() override {
    return pack_.graph_ && pack_.batched() ? std::make_unique<StepRecording>() : nullptr;
  }
  void run_step(StepRecording* recording, const std::function<void()>& step) override {
    (void)recording;
    if (pack_.batched()) {
      std::lock_guard<std::recursive_mutex> lock(pack_.device_);
      pack_.batch_->begin_member(member_);
      try {
        step();
      } catch (...) {
        pack_.batch_->end_member();
        throw;
      }
      pack_.batch_->end_member();
    } else {
      std::vector<std::function<void(Backend&)>>& calls = pack_.calls_[static_cast<size_t>(member_)];
      calls.clear();
      collecting_ = true;
      try {
        step();
      } catch (...) {
        collecting_ = false;
        calls.clear();
        throw;
      }
      collecting_ = false;
    }
    pack_.arrive(member_);
  }
  // `work` would hold the shared backend while it waits for the others.
  double device_seconds(const std::function<void()>& work) override {
    (void)work;
    throw Error("device_seconds is not available to a member of a pack in lock step");
  }
  bool set_tf32(bool on) override { return now([&](Backend& b) { return b.set_tf32(on); }); }
  bool set_gemm_epilogues(bool on) override { return now([&](Backend& b) { return b.set_gemm_epilogues(on); }); }
  DenseFusionCounts dense_fusion_counts() const override {
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    return pack_.shared_->dense_fusion_counts();
  }
  // A pack's collected step runs on one stream: no side branches.
  void begin_side_branch() override {}
  void end_side_branch() override {}
  void join_side_branches() override {}
  bool set_two_branch(bool on) override { return !on; }
  void set_adaptive_threads(bool on) override {
    now([&](Backend& b) { b.set_adaptive_threads(on); });
  }

 private:
  // A call outside a step: now, on the shared backend, alone. Not while an
  // interleaved step is collected: it would run ahead of the calls collected.
  template <typename F>
  auto now(F&& f) -> decltype(f(std::declval<Backend&>())) {
    if (collecting_) {
      throw Error("a call that cannot wait inside a pack member's collected step (an internal error)");
    }
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    return f(*pack_.shared_);
  }
  // A call that a step makes: collected as a closure while an interleaved
  // step is collected, else run now (a StepBatch collecting sees it).
  void step_call(std::function<void(Backend&)> call) {
    if (collecting_) {
      pack_.calls_[static_cast<size_t>(member_)].push_back(std::move(call));
      return;
    }
    std::lock_guard<std::recursive_mutex> lock(pack_.device_);
    call(*pack_.shared_);
  }

  LockstepPack& pack_;
  const int member_;
  bool collecting_ = false;  // only this member's thread reads or writes it
};

LockstepPack::LockstepPack(std::unique_ptr<Backend> shared, int members, bool graph)
    : shared_(std::move(shared)),
      graph_(graph),
      calls_(static_cast<size_t>(std::max(members, 0))),
      errors_(static_cast<size_t>(std::max(members, 0))) {
  if (members < 1) throw Error("a pack in lock step needs at least one member");
  batch_ = shared_->make_step_batch(members, graph);
}

LockstepPack::~LockstepPack() = default;

std::unique_ptr<Backend> LockstepPack::member_backend(int member) {
  if (member < 0 || member >= members()) throw Error("no pack member " + std::to_string(member));
  return std::make_unique<MemberBackend>(*this, member);
}

void LockstepPack::enter(const std::vector<int>& members) {
  std::lock_guard<std::mutex> lock(round_mutex_);
  if (!arrived_.empty()) throw Error("a pack's members entered a round still running (an internal error)");
  present_.clear();
  for (int m : members) {
    if (m < 0 || m >= this->members()) throw Error("no pack member " + std::to_string(m));
    present_.insert(m);
  }
}

void LockstepPack::leave(int member) {
  std::lock_guard<std::mutex> lock(round_mutex_);
  present_.erase(member);
  // The others may be waiting for this member alone.
  if (!arrived_.empty() && arrived_.size() == present_.size()) run_round();
}

void LockstepPack::arrive(int member) {
  std::unique_lock<std::mutex> lock(round_mutex_);
  if (present_.count(member) == 0) {
    throw Error("pack member " + std::to_string(member) + " stepped outside its pack's round (an internal error)");
  }
  arrived_.push_back(member);
  const unsigned long long round = rounds_;
  if (arrived_.size() == present_.size()) {
    run_round();
  } else {
    round_done_.wait(lock, [&] { return rounds_ != round; });
  }
  if (std::exception_ptr error = std::exchange(errors_[static_cast<size_t>(member)], nullptr)) {
    std::rethrow_exception(error);
  }
}

void LockstepPack::run_round() {
  std::vector<int> members = std::move(arrived_);
  arrived_.clear();
  std::sort(members.begin(), members.end());
  std::lock_guard<std::recursive_mutex> device(device_);
  if (batch_) {
    try {
      batch_->run(members);
    } catch (...) {
      // The members' calls ran as one: each member of the round gets the
      // error (on CUDA one is often sticky for the whole context anyway).
      for (int m : members) errors_[static_cast<size_t>(m)] = std::current_exception();
    }
  } else {
    // Interleaved: a member whose call throws stops there, alone; the
    // others' steps go on.
    size_t calls = 0;
    for (int m : members) calls = std::max(calls, calls_[static_cast<size_t>(m)].size());
    for (size_t j = 0; j < calls; ++j) {
      for (int m : members) {
        const auto& step = calls_[static_cast<size_t>(m)];
        if (j >= step.size() || errors_[static_cast<size_t>(m)]) continue;
        try {
          step[j](*shared_);
        } catch (...) {
          errors_[static_cast<size_t>(m)] = std::current_exception();
        }
      }
    }
  }
  for (int m : members) calls_[static_cast<size_t>(m)].clear();
  ++rounds_;
  round_done_.notify_all();
}

}  // namespace cuvae
