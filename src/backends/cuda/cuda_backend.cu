// The CUDA backend: cuBLAS for the GEMMs, the fused kernels of kernels/ for
// everything else, all on one compute stream, so a training step never waits
// for the host. Batches come in either from the data set resident in device
// memory (binarize_rows) or through pinned staging buffers on a second (copy)
// stream, double-buffered and ordered with events, so the next batch's copy
// overlaps this batch's compute (upload_and_binarize). A training step can be
// recorded once as a CUDA Graph and replayed (run_step, step_graph.h). With
// set_two_branch, the calls the model marks as off the critical path (its
// weight-gradient GEMMs, Backend::begin_side_branch) run on a third (side)
// stream with its own cuBLAS handle, workspace and bias-gradient scratch,
// forked from and joined into the compute stream with events, so a captured
// step is a graph of two branches. A pack's members' steps can run together
// (make_step_batch, lockstep.h): each member's step is collected (its
// launches, GEMMs and copies recorded with their arguments) and then call j
// of every member runs as one launch of the kernel's batched form
// (kernels/launch.cuh) or one cublasSgemmBatched, the pack's whole step one
// CUDA Graph.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "cuvae/backends/cuda/collected_step.h"
#include "cuvae/backends/cuda/cuda_backend.h"
#include "cuvae/backends/cuda/cuda_check.h"
#include "cuvae/backends/cuda/cuda_module.h"
#include "cuvae/backends/cuda/kernels.h"
#include "cuvae/backends/cuda/lt_dense.h"
#include "cuvae/backends/cuda/step_graph.h"

namespace cuvae {

bool cuda_device_present(std::string* why_not) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    // E.g. "CUDA driver version is insufficient for CUDA runtime version" on a
    // machine without an NVIDIA driver: that means no device, not a failure.
    *why_not = std::string("no CUDA device: ") + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error state
    return false;
  }
  if (count == 0) {
    *why_not = "no CUDA device found";
    return false;
  }
  return true;
}

namespace {

class CudaBackend;

// The pointer arrays of one batched GEMM of a pack's step, in device memory
// (cuBLAS reads them there): B's, A's and C's, `count` each. Written before
// the step's first (eager) run, then the same on every replay.
struct GemmPointers {
  std::vector<const void*> host;
  void** device = nullptr;
  size_t capacity = 0;
};

// A pack's steps in lock step on one CUDA backend (Backend::make_step_batch).
class CudaStepBatch final : public StepBatch {
 public:
  CudaStepBatch(CudaBackend& backend, int members, bool graph);
  ~CudaStepBatch() override;
  void begin_member(int member) override;
  void end_member() override;
  void run(const std::vector<int>& members) override;
  Counts counts_so_far() const override { return counts; }

  std::vector<CollectedStep> steps;
  // Per batched GEMM of the step, in order: those of the rounds with every
  // member (which the pack's graph reads on every replay: never rewritten
  // while it exists), and those of rounds without some (eager, rewritten as
  // the members change).
  std::vector<GemmPointers> gemm_pointers, partial_gemm_pointers;
  Counts counts;

 private:
  CudaBackend& backend_;
  std::unique_ptr<StepGraph> graph_;  // the whole pack's step, when every member runs
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    CUVAE_CUDA_CHECK(cudaGetDevice(&device_));
    CUVAE_CUDA_CHECK(cudaGetDeviceProperties(&properties_, device_));
    CUVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
    CUVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    CUVAE_CUBLAS_CHECK(cublasCreate(&cublas_));
    CUVAE_CUBLAS_CHECK(cublasSetStream(cublas_, compute_));
    // FP32 by default: no TF32 tensor-core math unless asked for (set_tf32).
    CUVAE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    // Our own cuBLAS workspace, so that a GEMM captured into a CUDA Graph
    // never needs to allocate (32 MiB: cuBLAS's recommendation for Hopper).
    workspace_ = allocate(kCublasWorkspaceBytes);
    CUVAE_CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_, kCublasWorkspaceBytes));
    // cuBLASLt shares it: both run on the compute stream, one after another.
    lt_ = std::make_unique<LtDense>(compute_, workspace_, kCublasWorkspaceBytes);
    for (Staging& s : staging_) {
      CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
      CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&s.consumed, cudaEventDisableTiming));
    }
    CUVAE_CUDA_CHECK(cudaEventCreate(&timing_start_));
    CUVAE_CUDA_CHECK(cudaEventCreate(&timing_stop_));
  }

  ~CudaBackend() override {
    // Tearing down cannot throw: a failure is a warning, and the rest is still released.
    CUVAE_CUDA_WARN(cudaStreamSynchronize(compute_));
    CUVAE_CUDA_WARN(cudaStreamSynchronize(copy_));
    for (Staging& s : staging_) {
      CUVAE_CUDA_WARN(cudaFreeHost(s.host));
      CUVAE_CUDA_WARN(cudaFree(s.device));
      CUVAE_CUDA_WARN(cudaEventDestroy(s.copied));
      CUVAE_CUDA_WARN(cudaEventDestroy(s.consumed));
    }
    CUVAE_CUDA_WARN(cudaEventDestroy(timing_start_));
    CUVAE_CUDA_WARN(cudaEventDestroy(timing_stop_));
    if (side_.stream != nullptr) {
      CUVAE_CUDA_WARN(cudaStreamSynchronize(side_.stream));
      cublasDestroy(side_.cublas);
      CUVAE_CUDA_WARN(cudaFree(side_.workspace));
      CUVAE_CUDA_WARN(cudaFree(side_.bias_scratch.data));
      CUVAE_CUDA_WARN(cudaEventDestroy(side_.forked));
      CUVAE_CUDA_WARN(cudaEventDestroy(side_.done));
      CUVAE_CUDA_WARN(cudaStreamDestroy(side_.stream));
    }
    lt_.reset();
    cublasDestroy(cublas_);  // its status has no cudaError_t; nothing to do on failure
    CUVAE_CUDA_WARN(cudaFree(workspace_));
    CUVAE_CUDA_WARN(cudaFree(bias_scratch_.data));
    for (float* retired : retired_scratch_) CUVAE_CUDA_WARN(cudaFree(retired));
    CUVAE_CUDA_WARN(cudaStreamDestroy(compute_));
    CUVAE_CUDA_WARN(cudaStreamDestroy(copy_));
  }

  std::string name() const override { return "cuda"; }

  // The device memory free now: what a model about to be made can have
  // (check_model_fits refuses a configuration beyond it with one line,
  // before any allocation fails mid-way).
  size_t memory_bytes() const override {
    size_t free = 0, total = 0;
    CUVAE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
  }

  std::string description() const override {
    size_t free_bytes = 0, total_bytes = 0;
    CUVAE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    int runtime = 0, driver = 0;
    CUVAE_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    CUVAE_CUDA_CHECK(cudaDriverGetVersion(&driver));
    return std::string("CUDA device ") + std::to_string(device_) + ": " + properties_.name +
           ", sm_" + std::to_string(properties_.major) + std::to_string(properties_.minor) + ", " +
           std::to_string(total_bytes >> 20) + " MiB, runtime " + std::to_string(runtime) +
           ", driver " + std::to_string(driver);
  }

  void* allocate(size_t bytes) override {
    // A step's graph runs after the step's calls return: memory allocated or
    // freed inside them would be gone (or not yet there) when the graph runs.
    not_in_a_step("allocate");
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      throw Error("out of device memory: asked for " + std::to_string(bytes >> 20) + " MiB (" +
                  std::to_string(bytes) + " bytes), " + std::to_string(free_bytes >> 20) +
                  " MiB free of " + std::to_string(total_bytes >> 20) + " MiB (" +
                  cudaGetErrorString(status) + ")");
    }
    return p;
  }
  void deallocate(void* pointer) override {
    not_in_a_step("deallocate");
    if (lt_) lt_->forget_mask(pointer);  // the address may come back as another buffer
    CUVAE_CUDA_WARN(cudaFree(pointer));  // called from destructors: must not throw
  }

  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    not_in_a_step("copy_to_device");
    not_collecting("copy_to_device");
    join_before_host_wait("copy_to_device");  // the side branch may read dst
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, compute_));
    // A pageable source may be reused by the caller at once: wait.
    CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    not_in_a_step("copy_to_host");
    not_collecting("copy_to_host");
    join_before_host_wait("copy_to_host");
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, compute_));
    CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (collect_ != nullptr) {
      CollectedCall c;
      c.kind = CollectedCall::Kind::kCopy;
      c.dst = dst;
      c.src = src;
      c.bytes = bytes;
      collect_->push_back(std::move(c));
      return;
    }
    if (graph_ != nullptr && !graph_->call("cudaMemcpyAsync", call_key(dst, src, bytes))) return;
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
  }
  void synchronize() override {
    not_in_a_step("synchronize");
    not_collecting("synchronize");
    join_before_host_wait("synchronize");
    CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }

  void gemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
            int lda, const float* b, int ldb, float beta, float* c, int ldc) override {
    // cuBLAS is column-major. A row-major C (m x n) is a column-major C^T
    // (n x m), and C^T = op(B)^T op(A)^T: swap the operands and the sizes.
    if (collect_ != nullptr) {
      CollectedCall call;
      call.kind = CollectedCall::Kind::kGemm;
      call.gemm = CollectedGemm{transpose_a, transpose_b, m, n, k, alpha, beta, a, b, c, lda, ldb, ldc};
      collect_->push_back(std::move(call));
      return;
    }
    if (graph_ != nullptr &&
        !graph_->call("cublasSgemm", call_key(transpose_a, transpose_b, m, n, k, alpha, a, lda, b,
                                              ldb, beta, c, ldc, tf32_))) {
      return;
    }
    CUVAE_CUBLAS_CHECK(cublasSgemm(on_side() ? side_.cublas : cublas_, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                                   ldb, a, lda, &beta, c, ldc));
  }

  void dense_forward(const float* x, const float* w, const float* b, int rows, int in, int out,
                     Activation act, float* y, void* mask) override {
    // cuBLASLt's epilogues have bias and bias + ReLU, no tanh: LtDense::forward
    // refuses a tanh layer (counted unfused), which then runs gemm + our kernel.
    // LtDense runs on the compute stream: on the side branch, the unfused layer.
    // A pack's collected step batches plain GEMMs (cuBLASLt takes no pointer arrays).
    if (gemm_epilogues_ && collect_ == nullptr && !on_side() && lt_->forward(x, w, b, rows, in, out, act, y, mask, graph_)) {
      return;
    }
    Backend::dense_forward(x, w, b, rows, in, out, act, y, mask);
  }
  void dense_backward_input(const float* da, const float* w, int rows, int in, int out,
                            const float* x, const void* x_mask, Activation x_act, float* dx,
                            float* x_dbias) override {
    // Only ReLU has a fused input gradient (DRELU_BGRAD, from the forward's
    // bit mask); identity and tanh layers run gemm + our kernel.
    if (gemm_epilogues_ && collect_ == nullptr && !on_side() && x_act == Activation::kRelu &&
        lt_->backward_input(da, w, rows, in, out, x_mask, dx, x_dbias, graph_)) {
      return;
    }
    Backend::dense_backward_input(da, w, rows, in, out, x, x_mask, x_act, dx, x_dbias);
  }
  size_t activation_mask_bytes(int rows, int cols) const override {
    return gemm_epilogues_ ? LtDense::mask_bytes(rows, cols) : 0;
  }

  void bias_activation_forward(float* y, const float* bias, int rows, int cols,
                               Activation act) override {
    kernels::bias_activation_forward(y, bias, rows, cols, act, target());
  }
  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                     Activation act, const float* row_scale) override {
    // Each branch has its own scratch: the two may run at once.
    // A pack member's collected step has its own slice of it: the members'
    // kernels run at once.
    Scratch& scratch = on_side() ? side_.bias_scratch : bias_scratch_;
    const size_t per_member = kernels::bias_grad_scratch_floats(rows, cols);
    const size_t needed = per_member * static_cast<size_t>(collect_ != nullptr ? collect_members_ : 1);
    if (scratch.floats < needed) {
      // Sized by the eager first run of a step, so never inside a capture.
      not_in_a_step("growing the bias-gradient scratch buffer");
      CUVAE_CUDA_CHECK(cudaStreamSynchronize(stream()));  // the old buffer may be in use
      // A captured step graph holds the old buffer's address and may be
      // replayed after this eager call: one that was captured is kept until
      // the backend goes, never freed under a graph.
      if (scratch.captured) {
        retired_scratch_.push_back(scratch.data);
      } else {
        deallocate(scratch.data);
      }
      scratch = Scratch{};
      scratch.data = static_cast<float*>(allocate(needed * sizeof(float)));
      scratch.floats = needed;
    }
    // A collected step's launches are captured when the pack's step is.
    if (graph_ != nullptr || collect_ != nullptr) scratch.captured = true;
    float* slice = scratch.data + (collect_ != nullptr ? per_member * static_cast<size_t>(collect_member_) : 0);
    kernels::activation_backward_bias_grad(dy, y, dbias, rows, cols, act, row_scale, slice, target());
  }

  void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                           const RandomKey& key, float* x) override {
    not_in_a_step("upload_and_binarize");
    not_collecting("upload_and_binarize");
    join_before_host_wait("upload_and_binarize");  // the side branch may read x
    const size_t bytes = static_cast<size_t>(rows) * cols;
    Staging& s = staging_[next_staging_];
    next_staging_ = (next_staging_ + 1) % staging_.size();
    if (s.capacity < bytes) {
      // Growing: wait for every use of the old buffers, then reallocate.
      CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
      CUVAE_CUDA_CHECK(cudaStreamSynchronize(copy_));
      CUVAE_CUDA_CHECK(cudaFreeHost(s.host));
      CUVAE_CUDA_CHECK(cudaFree(s.device));
      s.host = nullptr;
      s.device = nullptr;
      s.capacity = 0;  // stays consistent if an allocation below throws
      CUVAE_CUDA_CHECK(cudaMallocHost(&s.host, bytes));
      s.device = static_cast<uint8_t*>(allocate(bytes));
      s.capacity = bytes;
    }
    // The pinned buffer is free once its previous copy has finished, and the
    // device buffer once the kernel that read it has run.
    CUVAE_CUDA_CHECK(cudaEventSynchronize(s.copied));
    std::memcpy(s.host, host_pixels, bytes);
    CUVAE_CUDA_CHECK(cudaStreamWaitEvent(copy_, s.consumed, 0));
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(s.device, s.host, bytes, cudaMemcpyHostToDevice, copy_));
    CUVAE_CUDA_CHECK(cudaEventRecord(s.copied, copy_));
    CUVAE_CUDA_CHECK(cudaStreamWaitEvent(compute_, s.copied, 0));
    kernels::binarize(s.device, nullptr, 0, rows, cols, first_row * static_cast<uint64_t>(cols), key,
                      x, target());
    CUVAE_CUDA_CHECK(cudaEventRecord(s.consumed, compute_));
  }

  void binarize_rows(const uint8_t* images, const uint32_t* order, uint64_t first_position, int rows,
                     int cols, const RandomKey& key, float* x) override {
    kernels::binarize(images, order, first_position, rows, cols, 0, key, x, target());
  }

  void fill_normal(float* out, size_t count, uint64_t first_index,
                   const RandomKey& key) override {
    kernels::fill_normal(out, count, first_index, key, target());
  }

  void reparameterize_kl_forward(const float* encoder_out, const float* eps, int images,
                                 int samples, int latent, float* z, float* row_kl,
                                 float* row_log_ratio) override {
    kernels::reparameterize_kl_forward(encoder_out, eps, images, samples, latent, z, row_kl,
                                       row_log_ratio, target());
  }
  void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                  int images, int samples, int latent, float kl_scale,
                                  float* d_encoder_out) override {
    kernels::reparameterize_kl_backward(dz, encoder_out, eps, images, samples, latent, kl_scale,
                                        d_encoder_out, target());
  }
  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                  int samples, float grad_scale, float* dlogits,
                                  float* row_logprob) override {
    kernels::bernoulli_logprob_and_grad(x, logits, rows, cols, samples, grad_scale, dlogits,
                                        row_logprob, target());
  }
  void accumulate_elbo(const float* row_logprob, const float* row_kl, int images, int samples,
                       double* accumulator) override {
    kernels::accumulate_elbo(row_logprob, row_kl, images, samples, accumulator, target());
  }
  void importance_weights(const float* row_logprob, const float* row_log_ratio, int images,
                          int samples, float* weights, float* row_bound) override {
    kernels::importance_weights(row_logprob, row_log_ratio, images, samples, weights, row_bound,
                                target());
  }
  void grouped_objective_weights(const float* row_logprob, const float* row_log_ratio,
                                 const float* group_bound, int images, int groups, int samples,
                                 float beta, float* weights, float* row_bound) override {
    kernels::grouped_objective_weights(row_logprob, row_log_ratio, group_bound, images, groups,
                                       samples, beta, weights, row_bound, target());
  }
  void importance_weighted_latent_backward(const float* dz, const float* encoder_out,
                                           const float* eps, const float* z, const float* weights,
                                           int images, int samples, int latent, float scale,
                                           bool dreg, float* d_encoder_out) override {
    kernels::importance_weighted_latent_backward(dz, encoder_out, eps, z, weights, images, samples,
                                                 latent, scale, dreg, d_encoder_out, target());
  }
  void gaussian_layer_forward(const float* h_below, const float* p_params,
                              const float* upper_log_ratio, int rows, int latent,
                              float* row_log_ratio) override {
    kernels::gaussian_layer_forward(h_below, p_params, upper_log_ratio, rows, latent,
                                    row_log_ratio, target());
  }
  void gaussian_layer_backward(const float* h_below, const float* p_params, const float* weights,
                               int rows, int latent, float scale, float* d_params,
                               float* dh_below) override {
    kernels::gaussian_layer_backward(h_below, p_params, weights, rows, latent, scale, d_params,
                                     dh_below, target());
  }
  void upper_latent_backward(const float* dh, const float* encoder_out, const float* eps,
                             const float* h, const float* weights, int rows, int latent,
                             float scale, bool dreg, float* d_encoder_out,
                             float* d_encoder_out_below) override {
    kernels::upper_latent_backward(dh, encoder_out, eps, h, weights, rows, latent, scale, dreg,
                                   d_encoder_out, d_encoder_out_below, target());
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override {
    kernels::adam_step(params, grads, m, v, count, step, target());
  }

  double device_seconds(const std::function<void()>& work) override {
    not_in_a_step("device_seconds");
    not_collecting("device_seconds");
    CUVAE_CUDA_CHECK(cudaEventRecord(timing_start_, compute_));
    work();
    join_before_host_wait("device_seconds");  // the side branch's work counts too
    CUVAE_CUDA_CHECK(cudaEventRecord(timing_stop_, compute_));
    CUVAE_CUDA_CHECK(cudaEventSynchronize(timing_stop_));
    float milliseconds = 0.0f;
    CUVAE_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, timing_start_, timing_stop_));
    return 1e-3 * milliseconds;
  }

  std::unique_ptr<StepRecording> make_step_recording() override {
    return std::make_unique<StepGraph>();
  }

  void run_step(StepRecording* recording, const std::function<void()>& step) override {
    auto* graph = dynamic_cast<StepGraph*>(recording);
    if (graph == nullptr) {
      run_eagerly(step);
      return;
    }
    if (graph->instantiated()) {
      graph->begin_replay();
      {
        const ActiveStep active(graph_, graph);
        step();
        finish_side_branch();
      }
      graph->end_replay(compute_);
      return;
    }
    if (!graph->warmed_up) {
      // The first run goes eagerly: whatever a call sets up on first use
      // (cuBLAS's kernels, buffers) is then in place before the capture.
      run_eagerly(step);
      graph->warmed_up = true;
      return;
    }
    graph->begin_capture(compute_);  // before ActiveStep: a failed begin leaves graph_ unset
    try {
      const ActiveStep active(graph_, graph);
      step();
      finish_side_branch();  // a capture must end with every stream joined
    } catch (...) {
      rejoin_side_branch_of_failed_capture(*graph);
      graph->abort_capture(compute_);
      throw;
    }
    graph->end_capture(compute_);
    graph->launch(compute_);  // the capture recorded the step; now run it
  }

  bool set_tf32(bool on) override {
    if (on && properties_.major < 8) return false;  // tensor-core TF32 needs sm_80+
    CUVAE_CUBLAS_CHECK(cublasSetMathMode(cublas_, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    if (side_.cublas != nullptr) {
      CUVAE_CUBLAS_CHECK(cublasSetMathMode(side_.cublas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    }
    tf32_ = on;
    lt_->set_tf32(on);
    return true;
  }
  bool set_gemm_epilogues(bool on) override {
    not_in_a_step("set_gemm_epilogues");
    lt_->forget_masks();  // a mask from before an off-and-on may be stale
    gemm_epilogues_ = on;
    return true;
  }
  DenseFusionCounts dense_fusion_counts() const override { return lt_->counts(); }

  bool set_two_branch(bool on) override {
    not_in_a_step("set_two_branch");
    join_before_host_wait("set_two_branch");
    if (on && side_.stream == nullptr) make_side_branch();
    two_branch_ = on;
    return true;
  }

  // The fork: the side stream starts after everything issued so far on the
  // compute stream. Replaying a graph, the graph has the edges: nothing to issue.
  // A pack's collected step runs on one stream: no branches there.
  void begin_side_branch() override {
    if (!two_branch_ || collect_ != nullptr) return;
    branches().fork();
    if (replaying()) return;
    CUVAE_CUDA_CHECK(cudaEventRecord(side_.forked, compute_));
    CUVAE_CUDA_CHECK(cudaStreamWaitEvent(side_.stream, side_.forked, 0));
  }
  void end_side_branch() override {
    if (!two_branch_ || collect_ != nullptr) return;
    branches().end_branch();
    if (replaying()) return;
    // The side stream runs in order, so the last end covers every branch before it.
    CUVAE_CUDA_CHECK(cudaEventRecord(side_.done, side_.stream));
  }
  void join_side_branches() override {
    if (!two_branch_ || collect_ != nullptr || !branches().join() || replaying()) return;
    CUVAE_CUDA_CHECK(cudaStreamWaitEvent(compute_, side_.done, 0));
  }

  std::unique_ptr<StepBatch> make_step_batch(int members, bool graph) override {
    not_in_a_step("make_step_batch");
    if (members < 1 || members > 65535) {
      throw Error("a pack in lock step has 1 to 65535 members, not " + std::to_string(members));
    }
    return std::make_unique<CudaStepBatch>(*this, members, graph);
  }

  // ---- CudaStepBatch's side
  // While collecting, every launch, GEMM and device copy is appended to
  // `step` instead of run; `member` of `members` picks its scratch slice.
  void begin_collect(CollectedStep* step, int member, int members) {
    not_in_a_step("collecting a pack member's step");
    if (collect_ != nullptr) throw Error("collecting two pack members' steps at once (an internal error)");
    if (on_side()) throw Error("collecting a pack member's step inside a side branch (an internal error)");
    collect_ = step;
    collect_member_ = member;
    collect_members_ = members;
  }
  void end_collect() { collect_ = nullptr; }
  // The collected steps of `members`, call j of each together: one batched
  // launch or GEMM where the calls match, else each in turn. Inside run_step.
  void run_collected(CudaStepBatch& batch, const std::vector<int>& members) {
    std::vector<GemmPointers>& slots =
        members.size() == batch.steps.size() ? batch.gemm_pointers : batch.partial_gemm_pointers;
    size_t calls = 0;
    for (int m : members) calls = std::max(calls, batch.steps.at(static_cast<size_t>(m)).size());
    std::vector<const CollectedCall*> group;
    std::vector<const unsigned char*> args;
    size_t gemms = 0;
    for (size_t j = 0; j < calls; ++j) {
      group.clear();
      bool together = true;
      for (int m : members) {
        const CollectedStep& step = batch.steps[static_cast<size_t>(m)];
        if (j < step.size()) {
          group.push_back(&step[j]);
        } else {
          together = false;  // a member whose step made fewer calls: each in turn
        }
      }
      for (const CollectedCall* c : group) together = together && c->batches_with(*group[0]);
      if (together && group.size() > 1) {
        ++batch.counts.batched;
      } else {
        batch.counts.alone += static_cast<long>(group.size());
      }
      if (together && group.size() > 1 && group[0]->kind == CollectedCall::Kind::kKernel) {
        args.clear();
        for (const CollectedCall* c : group) args.push_back(c->args.data());
        const CollectedCall& first = *group[0];
        first.launch_batched(target(), first.grid, first.block, first.shared_bytes, args.data(),
                             static_cast<int>(args.size()));
      } else if (together && group.size() > 1 && group[0]->kind == CollectedCall::Kind::kGemm) {
        if (slots.size() <= gemms) slots.resize(gemms + 1);
        batched_gemm(group, slots[gemms++]);
      } else {
        for (const CollectedCall* c : group) run_one(*c);
      }
    }
  }
  void free_gemm_pointers(GemmPointers& p) noexcept {
    if (p.device != nullptr) CUVAE_CUDA_WARN(cudaFree(p.device));
    p = GemmPointers{};
  }

 private:
  struct Staging {
    uint8_t* host = nullptr;    // pinned
    uint8_t* device = nullptr;
    size_t capacity = 0;
    cudaEvent_t copied = nullptr;    // the copy into `device` has finished
    cudaEvent_t consumed = nullptr;  // the kernel reading `device` has finished
  };

  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

  // graph_ names the step being captured or replayed for exactly as long as
  // the step's calls run, exceptions included.
  class ActiveStep {
   public:
    ActiveStep(StepGraph*& slot, StepGraph* graph) : slot_(slot) { slot_ = graph; }
    ~ActiveStep() { slot_ = nullptr; }
    ActiveStep(const ActiveStep&) = delete;
    ActiveStep& operator=(const ActiveStep&) = delete;

   private:
    StepGraph*& slot_;
  };

  // A branch's bias-gradient scratch: per-chunk column sums.
  struct Scratch {
    float* data = nullptr;
    size_t floats = 0;
    bool captured = false;  // a step graph's kernel node holds `data`
  };
  // The side branch's stream, cuBLAS handle (and workspace: two GEMMs may
  // run at once), scratch, and the events of its fork and of its last end.
  struct SideBranch {
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    void* workspace = nullptr;
    Scratch bias_scratch;
    cudaEvent_t forked = nullptr, done = nullptr;
  };

  void make_side_branch() {
    CUVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&side_.stream, cudaStreamNonBlocking));
    CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&side_.forked, cudaEventDisableTiming));
    CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&side_.done, cudaEventDisableTiming));
    CUVAE_CUBLAS_CHECK(cublasCreate(&side_.cublas));
    CUVAE_CUBLAS_CHECK(cublasSetStream(side_.cublas, side_.stream));
    CUVAE_CUBLAS_CHECK(cublasSetMathMode(side_.cublas, tf32_ ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    // The same workspace size as the main handle's, so cuBLAS picks the same
    // algorithms (and bits) on either branch.
    side_.workspace = allocate(kCublasWorkspaceBytes);
    CUVAE_CUBLAS_CHECK(cublasSetWorkspace(side_.cublas, side_.workspace, kCublasWorkspaceBytes));
  }

  // The branch structure being followed: the step graph's while one is
  // captured or replayed, else the backend's own (checked, nothing kept).
  StepBranches& branches() { return graph_ != nullptr ? graph_->branches : eager_branches_; }
  const StepBranches& branches() const { return graph_ != nullptr ? graph_->branches : eager_branches_; }
  bool on_side() const { return branches().branch() == StepBranches::Branch::kSide; }
  bool replaying() const { return graph_ != nullptr && graph_->replaying(); }
  cudaStream_t stream() const { return on_side() ? side_.stream : compute_; }
  // The end of a step: back on the main branch (ending on the side branch is
  // the caller's error), the side branch joined.
  void finish_side_branch() {
    if (on_side()) throw Error("a step ended inside a side branch (begin_side_branch without end_side_branch)");
    join_side_branches();
  }
  // A step run as it is (no graph), its side branch joined at the end; a step
  // that throws leaves the backend on the main branch.
  void run_eagerly(const std::function<void()>& step) {
    try {
      step();
      finish_side_branch();
    } catch (...) {
      eager_branches_ = StepBranches{};
      throw;
    }
  }
  // A capture that throws between a fork and its join (a branch-structure
  // error, cuBLASLt refusing inside the capture) has the side stream still
  // forked into it: ending the capture then fails as unjoined and can leave
  // that stream capturing, unusable. Its work is joined into the compute
  // stream first. Errors are ignored: the capture is being abandoned, and
  // the error being thrown is the one the caller gets.
  void rejoin_side_branch_of_failed_capture(const StepGraph& graph) noexcept {
    if (side_.stream == nullptr || !graph.branches.side_pending()) return;
    (void)cudaEventRecord(side_.done, side_.stream);
    (void)cudaStreamWaitEvent(compute_, side_.done, 0);
  }

  // Before the host waits for the compute stream: the side branch's work too.
  void join_before_host_wait(const char* what) {
    if (on_side()) throw Error(std::string(what) + " inside a side branch (an internal error)");
    join_side_branches();
  }

  kernels::LaunchTarget target() const { return {stream(), graph_, collect_}; }

  // Calls that wait for the host, or run at once, cannot be collected.
  void not_collecting(const char* what) const {
    if (collect_ != nullptr) {
      throw Error(std::string(what) + " inside a pack member's collected step (an internal error)");
    }
  }

  // One collected call as it is (a member's call that does not batch).
  void run_one(const CollectedCall& c) {
    switch (c.kind) {
      case CollectedCall::Kind::kKernel: {
        const unsigned char* args = c.args.data();
        c.launch_batched(target(), c.grid, c.block, c.shared_bytes, &args, 1);
        return;
      }
      case CollectedCall::Kind::kGemm: {
        const CollectedGemm& g = c.gemm;
        gemm(g.transpose_a, g.transpose_b, g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c, g.ldc);
        return;
      }
      case CollectedCall::Kind::kCopy:
        copy_on_device(c.dst, c.src, c.bytes);
        return;
    }
  }

  // The members' GEMM j as one cublasSgemmBatched (column-major, operands
  // swapped as in gemm()). Its pointer arrays are written before the pack's
  // first, eager, step; a captured or replayed step finds them unchanged.
  void batched_gemm(const std::vector<const CollectedCall*>& group, GemmPointers& pointers) {
    const CollectedGemm& g = group[0]->gemm;
    const size_t count = group.size();
    std::vector<const void*> host(3 * count);
    for (size_t i = 0; i < count; ++i) {
      host[i] = group[i]->gemm.b;
      host[count + i] = group[i]->gemm.a;
      host[2 * count + i] = group[i]->gemm.c;
    }
    const std::vector<unsigned char> shape = call_key(g.transpose_a, g.transpose_b, g.m, g.n, g.k, g.alpha,
                                                      g.lda, g.ldb, g.beta, g.ldc, tf32_);
    std::vector<unsigned char> key(shape.size() + host.size() * sizeof(void*));
    std::memcpy(key.data(), shape.data(), shape.size());
    std::memcpy(key.data() + shape.size(), host.data(), host.size() * sizeof(void*));
    if (graph_ != nullptr && !graph_->call("cublasSgemmBatched", key)) return;
    if (pointers.host != host) {
      if (graph_ != nullptr) {
        throw Error("a pack's batched GEMM changed its operands inside a recorded step (an internal error; "
                    "--no-cuda-graph avoids it)");
      }
      CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));  // a step before may still read the old arrays
      if (pointers.capacity < host.size()) {
        free_gemm_pointers(pointers);
        pointers.device = static_cast<void**>(allocate(host.size() * sizeof(void*)));
        pointers.capacity = host.size();
      }
      // On the compute stream, which is not ordered with the default stream's
      // copies (a pageable cudaMemcpy may return before its data has landed).
      pointers.host = host;
      CUVAE_CUDA_CHECK(cudaMemcpyAsync(pointers.device, pointers.host.data(), host.size() * sizeof(void*),
                                       cudaMemcpyHostToDevice, compute_));
      CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));  // the source is pageable
    }
    const int batch = static_cast<int>(count);
    auto* const* devices = pointers.device;
    CUVAE_CUBLAS_CHECK(cublasSgemmBatched(
        cublas_, g.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.n, g.m,
        g.k, &g.alpha, reinterpret_cast<const float* const*>(devices), g.ldb,
        reinterpret_cast<const float* const*>(devices + count), g.lda, &g.beta,
        reinterpret_cast<float* const*>(devices + 2 * count), g.ldc, batch));
  }
  // Calls that wait for the host cannot be part of a CUDA Graph step.
  void not_in_a_step(const char* what) const {
    if (graph_ != nullptr) {
      throw Error(std::string(what) + " inside a step recorded as a CUDA Graph (an internal error; --no-cuda-graph avoids it)");
    }
  }

  int device_ = 0;
  cudaDeviceProp properties_{};
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::array<Staging, 2> staging_{};
  size_t next_staging_ = 0;
  void* workspace_ = nullptr;
  Scratch bias_scratch_;  // the main branch's
  std::vector<float*> retired_scratch_;  // outgrown scratch buffers that a step graph may still read
  SideBranch side_;       // made by set_two_branch(true)
  bool two_branch_ = false;
  StepBranches eager_branches_;  // outside a captured or replayed step
  StepGraph* graph_ = nullptr;  // the step being captured or replayed
  bool tf32_ = false;
  std::unique_ptr<LtDense> lt_;  // dense layers with cuBLASLt epilogues
  cudaEvent_t timing_start_ = nullptr, timing_stop_ = nullptr;  // device_seconds
  bool gemm_epilogues_ = false;
  CollectedStep* collect_ = nullptr;  // the pack member's step being collected, if any
  int collect_member_ = 0, collect_members_ = 1;
};

CudaStepBatch::CudaStepBatch(CudaBackend& backend, int members, bool graph)
    : steps(static_cast<size_t>(members)), backend_(backend) {
  if (graph) graph_ = std::make_unique<StepGraph>();
}

CudaStepBatch::~CudaStepBatch() {
  for (GemmPointers& p : gemm_pointers) backend_.free_gemm_pointers(p);
  for (GemmPointers& p : partial_gemm_pointers) backend_.free_gemm_pointers(p);
}

void CudaStepBatch::begin_member(int member) {
  CollectedStep& step = steps.at(static_cast<size_t>(member));
  step.clear();
  backend_.begin_collect(&step, member, static_cast<int>(steps.size()));
}

void CudaStepBatch::end_member() { backend_.end_collect(); }

void CudaStepBatch::run(const std::vector<int>& members) {
  // The graph holds every member's calls: a round without some (a member that
  // stopped or failed mid-epoch) runs eagerly.
  StepGraph* graph = members.size() == steps.size() ? graph_.get() : nullptr;
  try {
    backend_.run_step(graph, [&] { backend_.run_collected(*this, members); });
  } catch (...) {
    for (int m : members) steps[static_cast<size_t>(m)].clear();
    throw;
  }
  for (int m : members) steps[static_cast<size_t>(m)].clear();
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  std::string why_not;
  if (!cuda_device_present(&why_not)) throw Error(why_not);
  return std::make_unique<CudaBackend>();
}

}  // namespace cuvae

// The module's entry point (cuda_module.h): the only symbol the core looks up.
namespace {

bool module_device_present(std::string* why_not) { return cuvae::cuda_device_present(why_not); }

cuvae::Backend* module_make_backend() { return cuvae::make_cuda_backend().release(); }

const cuvae::CudaModuleApi kModuleApi = {cuvae::kCudaModuleApiVersion, module_device_present, module_make_backend};

}  // namespace

extern "C" __attribute__((visibility("default"))) const cuvae::CudaModuleApi* cuvae_cuda_module() {
  return &kModuleApi;
}
