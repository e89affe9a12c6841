// The backend interface: what the model (src/model/vae_model.cpp, written once)
// needs from a device. The CPU backend (OpenBLAS + loops over the shared math
// in vae_math.h) is the reference; the CUDA backend implements the same calls
// with cuBLAS and the fused kernels of kernels/.
//
// All matrices are row-major float32 in backend memory. Pointers passed to
// these calls are backend pointers (from allocate) unless the parameter name
// says host_. Calls may run asynchronously; copy_to_host waits for them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "cuvae/model/philox.h"
#include "cuvae/model/vae_math.h"

namespace cuvae {

// What a backend keeps between runs of one fixed sequence of its calls (a
// training step): the CUDA backend's CUDA Graph (step_graph.h).
class StepRecording {
 public:
  virtual ~StepRecording() = default;
};

// A pack's training steps run together (lockstep.h): each member's step is
// collected between begin_member and end_member (the calls it makes on the
// backend are recorded, not run), then run() runs the members' calls
// together: call j of every member as one batched call where they match (the
// CUDA backend: one cuBLAS batched GEMM, one kernel launch over all members),
// the whole pack's step as one CUDA Graph when every member is there.
class StepBatch {
 public:
  virtual ~StepBatch() = default;
  virtual void begin_member(int member) = 0;
  virtual void end_member() = 0;
  // Runs the collected steps of `members` (distinct, in increasing order)
  // and forgets them.
  virtual void run(const std::vector<int>& members) = 0;
  // Since the batch was made: calls run as one for several members
  // (batched), and calls run for one member (alone: a member's call that
  // matched no other's, or a round of one).
  struct Counts {
    long batched = 0;
    long alone = 0;
  };
  virtual Counts counts_so_far() const = 0;
};

// How many dense-layer calls (dense_forward, dense_backward_input) a backend
// ran as one fused GEMM, and how many as a GEMM and a separate pass.
struct DenseFusionCounts {
  long fused = 0;
  long unfused = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual std::string name() const = 0;
  // One line for the start-up banner: threads and BLAS, or the device.
  virtual std::string description() const = 0;
  // True when backend memory is host memory (the CPU), so host data can be
  // handed to the backend's operations as it is, without a copy.
  virtual bool memory_is_host() const { return false; }
  // The backend's memory in bytes (the CPU's physical memory, a GPU's), for
  // refusing a configuration that cannot fit; 0 where unknown.
  virtual size_t memory_bytes() const { return 0; }

  // ---- memory
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* pointer) = 0;
  virtual void copy_to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void synchronize() = 0;

  // ---- dense layers
  // C = alpha op(A) op(B) + beta C, row-major; op(A) is m x k, op(B) k x n.
  virtual void gemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha,
                    const float* a, int lda, const float* b, int ldb, float beta, float* c,
                    int ldc) = 0;
  // y[r][c] = act(y[r][c] + bias[c]), in place: the layer's epilogue.
  virtual void bias_activation_forward(float* y, const float* bias, int rows, int cols,
                                       Activation act) = 0;
  // dy[r][c] *= act'(y[r][c]) in place (y is the layer's output), then
  // dbias[c] = sum_r dy[r][c]: the layer's backward epilogue. If row_scale
  // is not null, row r of dy is first multiplied by row_scale[r] (the IWAE
  // objectives' per-sample weights on the decoder's output gradient).
  virtual void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows,
                                             int cols, Activation act,
                                             const float* row_scale) = 0;

  // ---- whole dense layers (what the model calls; a backend may fuse them)
  // y = act(x W + b): x is rows x in, W in x out, y rows x out. `mask` is
  // activation_mask_bytes(rows, out) bytes of backend memory (null when
  // that is 0) where a backend may keep what the layer's backward needs of
  // the activation. By default: gemm, then bias_activation_forward.
  virtual void dense_forward(const float* x, const float* w, const float* b, int rows, int in,
                             int out, Activation act, float* y, void* mask);
  // The backward pass through a layer's input, given da = dloss/d(x W + b)
  // (rows x out): dx = (da W^T) * x_act'(x) (rows x in), then x_dbias[c] =
  // sum_r dx[r][c], where x, with x_mask, is the output of the dense_forward
  // before it (activation x_act) and x_dbias that layer's bias gradient. By
  // default: gemm, then activation_backward_bias_grad.
  virtual void dense_backward_input(const float* da, const float* w, int rows, int in, int out,
                                    const float* x, const void* x_mask, Activation x_act,
                                    float* dx, float* x_dbias);
  // Bytes of a dense layer's activation mask for rows x cols outputs (0 when
  // the backend keeps none).
  virtual size_t activation_mask_bytes(int rows, int cols) const {
    (void)rows;
    (void)cols;
    return 0;
  }

  // ---- the VAE's fused operations (per-element math in vae_math.h)
  // x[r][j] = binarize(host_pixels[r][j], u), u = uniform element
  // (first_row + r) * cols + j of `key`: moves one batch of raw uint8 pixels
  // to the device and binarizes it.
  virtual void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols,
                                   uint64_t first_row, const RandomKey& key, float* x) = 0;
  // The same from a data set already in backend memory: row r of x is image
  // order[first_position + r] of `images` (image first_position + r when
  // order is null), binarized with uniform element r * cols + j of `key`, so
  // the bits equal upload_and_binarize's of the same rows (first_row 0).
  virtual void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first_position,
                             int rows, int cols, const RandomKey& key, float* x) = 0;
  // out[i] = standard normal element (first_index + i) of `key`.
  virtual void fill_normal(float* out, size_t count, uint64_t first_index,
                           const RandomKey& key) = 0;
  // K samples per image (samples = K; K = 1 is the seed's one sample).
  // encoder_out is images x 2L (mean | log_std); eps, z and row_log_ratio
  // have images * K rows, sample k of image b in row b K + k:
  //   z = mean_b + exp(log_std_b) eps;  row_kl[b] = sum_j KL term (analytic), if not null;
  //   row_log_ratio[b K + k] = sum_j log p(z) - log q(z|x), if not null.
  virtual void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images,
                                         int samples, int latent, float* z, float* row_kl,
                                         float* row_log_ratio) = 0;
  // The K-sample ELBO's backward: d_encoder_out (images x 2L) from dz
  // (images * K rows, each the decoder's gradient), plus the analytic KL's
  // gradient with weight kl_scale:
  //   d mean_b    = sum_k dz_bk + kl_scale mean_b
  //   d log_std_b = sum_k dz_bk exp(log_std_b) eps_bk + kl_scale expm1(2 log_std_b)
  virtual void reparameterize_kl_backward(const float* dz, const float* encoder_out,
                                          const float* eps, int images, int samples, int latent,
                                          float kl_scale, float* d_encoder_out) = 0;
  // row_logprob[r] = sum_j log p(x[r / samples][j] | logits[r][j]) for the
  // rows x cols logits (x has rows / samples rows: sample rows share their
  // image); if dlogits is not null, dlogits = -grad_scale * d(log p)/d(logits)
  // = grad_scale (sigma - x).
  virtual void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows,
                                          int cols, int samples, float grad_scale,
                                          float* dlogits, float* row_logprob) = 0;
  // *accumulator += sum_b ((1/K) sum_k row_logprob[b K + k] - row_kl[b]) in
  // double, in a fixed order (row_kl may be null: no KL term); the sum stays
  // on the device until the caller reads it. With K = 1 and no KL, it adds
  // row_logprob's values: the per-image bounds of importance_weights.
  virtual void accumulate_elbo(const float* row_logprob, const float* row_kl, int images,
                               int samples, double* accumulator) = 0;
  // The K-sample importance-weighted bound of each image (vae_math.h):
  // log w_bk = row_logprob[b K + k] + row_log_ratio[b K + k];
  // row_bound[b] = log (1/K) sum_k w_bk, max-shifted, its sum in double;
  // weights[b K + k] = w~_bk = w_bk / sum_j w_bj if weights is not null.
  virtual void importance_weights(const float* row_logprob, const float* row_log_ratio,
                                  int images, int samples, float* weights, float* row_bound) = 0;
  // The grouped objectives (miwae, ciwae, piwae's encoder; vae_math.h): image b
  // has M = groups groups of K = samples samples, sample k of group m in row
  // (b M + m) K + k, and importance_weights ran on the B M groups, giving
  // each group's L_K in group_bound and its normalized weights w~ in weights.
  // In place, weights[r] becomes v = grouped_sample_weight(w~, beta, K, M)
  // (an image's v sum to 1); row_bound[b] = (1/M) sum_m grouped_bound_term(
  // sum_k log w_mk, L_K(m), beta, K), log w = row_logprob + row_log_ratio,
  // the sums in double in order k, then m.
  virtual void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                                         const float* group_bound, int images, int groups,
                                         int samples, float beta, float* weights,
                                         float* row_bound) = 0;
  // The IWAE (dreg false) or DReG (dreg true) backward to the encoder
  // outputs, for loss = -scale sum_b L_K(b): dz (images * K rows) from the
  // decoder, whose Bernoulli gradient had weight scale * w~_bk on row b K + k;
  // z, eps and weights are the forward's. With
  // dz'_bk = importance_weighted_dz(dz_bk, z_bk, eps_bk, sigma_b, w~_bk, scale, dreg):
  //   d mean_b    = sum_k dz'_bk
  //   d log_std_b = sum_k dz'_bk sigma_b eps_bk - (dreg ? 0 : scale)
  // (IWAE's -scale: log w's explicit + log_std, weighted by sum_k w~_bk = 1.)
  virtual void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                                   const float* eps, const float* z,
                                                   const float* weights, int images, int samples,
                                                   int latent, float scale, bool dreg,
                                                   float* d_encoder_out) = 0;
  // ---- stochastic layers above the first (vae_math.h, "More than one
  // stochastic layer"); every row is one sample, weighted on its own.
  // Layer s's terms of log w: h_below (rows x L) is the sample of layer
  // s - 1, p_params (rows x 2L, mean | log_std) the output of the decoder
  // p(h_{s-1}|h_s), upper_log_ratio (rows) layer s's reparameterize_kl_forward
  // log ratio:
  //   row_log_ratio[r] += upper_log_ratio[r] + sum_j gaussian_log_ratio_term(h, m, l)
  virtual void gaussian_layer_forward(const float* h_below, const float* p_params,
                                      const float* upper_log_ratio, int rows, int latent,
                                      float* row_log_ratio) = 0;
  // Its backward, for loss = -scale sum_r weights[r] log w_r:
  // gaussian_log_ratio_backward with g = scale weights[r] writes d_params
  // (rows x 2L) and adds dloss/dh to dh_below (rows x L) if it is not null.
  virtual void gaussian_layer_backward(const float* h_below, const float* p_params,
                                       const float* weights, int rows, int latent, float scale,
                                       float* d_params, float* dh_below) = 0;
  // The backward of layer s's reparameterization (upper_latent_backward_term
  // per element): d_encoder_out (rows x 2L) from dh (rows x L), the layer's
  // encoder_out, eps and sample h, for the encoder's parameters (DReG's when
  // dreg); if d_encoder_out_below is not null, the full (dreg false)
  // gradient too, which continues to the layer below.
  virtual void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                                     const float* h, const float* weights, int rows, int latent,
                                     float scale, bool dreg, float* d_encoder_out,
                                     float* d_encoder_out_below) = 0;
  // One Adam step over the whole flat parameter buffer.
  virtual void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                         const AdamStep& step) = 0;

  // ---- running a fixed step fast
  // A recording for run_step, or null where the backend has nothing to
  // record (the CPU; the CUDA backend with CUDA Graphs off).
  virtual std::unique_ptr<StepRecording> make_step_recording() { return nullptr; }
  // Runs `step`, which must make the same calls with the same buffers and
  // sizes every time (only kernel arguments such as a Philox key's step may
  // change). With a recording, the CUDA backend runs the first call as is,
  // captures the second as a CUDA Graph and replays the graph afterwards.
  virtual void run_step(StepRecording* recording, const std::function<void()>& step) {
    (void)recording;
    step();
  }
  // Runs `work` and returns the seconds it took where it runs: on the CUDA
  // backend between two CUDA events on its stream (the device's time, with
  // any gaps between launches, without the host's wait for the result), on
  // the CPU the host's clock. For benchmarks; not inside a recorded step.
  virtual double device_seconds(const std::function<void()>& work);
  // TF32 tensor-core math in the GEMMs (the CUDA backend on sm_80 and
  // newer); false if this backend cannot do what is asked.
  virtual bool set_tf32(bool on) { return !on; }
  // Dense layers as cuBLASLt GEMMs with fused epilogues (bias + ReLU forward,
  // ReLU gradient + bias gradient backward) where cuBLASLt has them for the
  // shape (the CUDA backend); false if this backend cannot do what is asked.
  // Set before the model is made: it changes activation_mask_bytes.
  virtual bool set_gemm_epilogues(bool on) { return !on; }
  // Since the backend was made; all zero where set_gemm_epilogues is off.
  virtual DenseFusionCounts dense_fusion_counts() const { return {}; }

  // ---- work off the critical path (the CUDA backend's two-branch step)
  // The calls between begin_side_branch() and end_side_branch() may run
  // concurrently with the calls after them, up to join_side_branches(); the
  // CUDA backend with set_two_branch(true) runs them on a second stream,
  // forked from its main one at begin and joined at the join (in a CUDA
  // Graph step: a second branch of the graph). The caller promises that no
  // call between begin and the join writes what a side call reads, or reads
  // or writes what a side call writes. The model: each layer's weight-gradient
  // GEMM goes on the side branch (nothing below reads it), and the join comes
  // before anything reads the gradients (Adam). Side branches do not nest; a
  // recorded step must end joined. No-ops where the calls run in order (the
  // CPU, and the CUDA backend by default).
  virtual void begin_side_branch() {}
  virtual void end_side_branch() {}
  virtual void join_side_branches() {}
  // Side-branch calls on a second stream (the CUDA backend); false if this
  // backend cannot do what is asked. Not inside a step.
  virtual bool set_two_branch(bool on) { return !on; }
  // Whether the CPU backend's training steps follow the load with their
  // thread count (thread_tuner.h; its default where CUVAE_THREADS allows).
  // A pack's members run side by side, one thread each (side_by_side.h):
  // there the tuner only costs (a pack of 2 at batch 20 ran at half the
  // speed with it). Never changes the numbers.
  virtual void set_adaptive_threads(bool on) { (void)on; }

  // ---- a pack in lock step (lockstep.h)
  // A batch for `members` models' steps, or null where the backend has no
  // batched way to run them (the CPU, whose packs run their members side by
  // side on threads: side_by_side.h). `graph`: the pack's step as one CUDA
  // Graph. Not inside a step.
  virtual std::unique_ptr<StepBatch> make_step_batch(int members, bool graph) {
    (void)members;
    (void)graph;
    return nullptr;
  }
};

// A typed backend allocation, freed on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  // An empty array holds no allocation: get() is null.
  DeviceArray(Backend& backend, size_t count)
      : backend_(&backend),
        count_(count),
        data_(count == 0 ? nullptr : static_cast<T*>(backend.allocate(count * sizeof(T)))) {}
  ~DeviceArray() { reset(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& other) noexcept { *this = std::move(other); }
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      reset();
      backend_ = other.backend_;
      count_ = other.count_;
      data_ = other.data_;
      other.backend_ = nullptr;
      other.count_ = 0;
      other.data_ = nullptr;
    }
    return *this;
  }
  T* get() const { return data_; }
  size_t size() const { return count_; }
  void reset() {
    if (data_ != nullptr) backend_->deallocate(data_);
    data_ = nullptr;
    count_ = 0;
  }

 private:
  Backend* backend_ = nullptr;
  size_t count_ = 0;
  T* data_ = nullptr;
};

// A host vector copied into a new backend array, and a backend array's first
// `count` values copied back.
template <typename T>
DeviceArray<T> to_device(Backend& backend, const std::vector<T>& host) {
  DeviceArray<T> array(backend, host.size());
  backend.copy_to_device(array.get(), host.data(), host.size() * sizeof(T));
  return array;
}

template <typename T>
std::vector<T> to_host(Backend& backend, const T* device, size_t count) {
  std::vector<T> host(count);
  backend.copy_to_host(host.data(), device, count * sizeof(T));
  return host;
}

// "auto" (CUDA when compiled in and a device is present, else the CPU),
// "cpu" or "cuda". Throws cuvae::Error for an unknown name or for "cuda"
// without a usable device (the message says why: not compiled in, or no
// device / driver).
std::unique_ptr<Backend> make_backend(const std::string& device);

// make_backend, then one line on `out` naming the device, and for "auto"
// that fell back to the CPU, why.
std::unique_ptr<Backend> open_backend(const std::string& device, std::ostream& out);

// Whether this build can use CUDA now, and if not, why (one line).
bool cuda_available(std::string* why_not);

}  // namespace cuvae
