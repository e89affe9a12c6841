// The CUDA backend: cuBLAS for the GEMMs, the fused kernels of kernels/ for
// everything else, all on one compute stream, so a training step never waits
// for the host. Batches come in through pinned staging buffers on a second
// (copy) stream, double-buffered and ordered with events, so the next batch's
// copy overlaps this batch's compute.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstring>
#include <string>

#include "cuvae/cuda_backend.h"
#include "cuvae/cuda_check.h"
#include "cuvae/kernels.h"

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

class CudaBackend final : public Backend {
 public:
  CudaBackend() {
    CUVAE_CUDA_CHECK(cudaGetDevice(&device_));
    CUVAE_CUDA_CHECK(cudaGetDeviceProperties(&properties_, device_));
    CUVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
    CUVAE_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    CUVAE_CUBLAS_CHECK(cublasCreate(&cublas_));
    CUVAE_CUBLAS_CHECK(cublasSetStream(cublas_, compute_));
    // FP32 by default: no TF32 tensor-core math unless asked for.
    CUVAE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    for (Staging& s : staging_) {
      CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&s.copied, cudaEventDisableTiming));
      CUVAE_CUDA_CHECK(cudaEventCreateWithFlags(&s.consumed, cudaEventDisableTiming));
    }
  }

  ~CudaBackend() override {
    // Errors while tearing down cannot be reported; release what we can.
    cudaStreamSynchronize(compute_);
    cudaStreamSynchronize(copy_);
    for (Staging& s : staging_) {
      cudaFreeHost(s.host);
      cudaFree(s.device);
      cudaEventDestroy(s.copied);
      cudaEventDestroy(s.consumed);
    }
    cublasDestroy(cublas_);
    cudaStreamDestroy(compute_);
    cudaStreamDestroy(copy_);
  }

  std::string name() const override { return "cuda"; }

  std::string description() const override {
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    return std::string("CUDA device ") + std::to_string(device_) + ": " + properties_.name +
           ", sm_" + std::to_string(properties_.major) + std::to_string(properties_.minor) + ", " +
           std::to_string(total_bytes >> 20) + " MiB, runtime " + std::to_string(runtime) +
           ", driver " + std::to_string(driver);
  }

  void* allocate(size_t bytes) override {
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
  void deallocate(void* pointer) override { cudaFree(pointer); }

  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, compute_));
    // A pageable source may be reused by the caller at once: wait.
    CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, compute_));
    CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_));
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    CUVAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, compute_));
  }
  void synchronize() override { CUVAE_CUDA_CHECK(cudaStreamSynchronize(compute_)); }

  void gemm(bool transpose_a, bool transpose_b, int m, int n, int k, float alpha, const float* a,
            int lda, const float* b, int ldb, float beta, float* c, int ldc) override {
    // cuBLAS is column-major. A row-major C (m x n) is a column-major C^T
    // (n x m), and C^T = op(B)^T op(A)^T: swap the operands and the sizes.
    CUVAE_CUBLAS_CHECK(cublasSgemm(cublas_, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                                   ldb, a, lda, &beta, c, ldc));
  }

  void bias_activation_forward(float* y, const float* bias, int rows, int cols,
                               Activation act) override {
    kernels::bias_activation_forward(y, bias, rows, cols, act, compute_);
  }
  void activation_backward_bias_grad(float* dy, const float* y, float* dbias, int rows, int cols,
                                     Activation act) override {
    kernels::activation_backward_bias_grad(dy, y, dbias, rows, cols, act, compute_);
  }

  void upload_and_binarize(const uint8_t* host_pixels, int rows, int cols, uint64_t first_row,
                           const RandomKey& key, float* x) override {
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
    kernels::binarize(s.device, rows, cols, first_row, key, x, compute_);
    CUVAE_CUDA_CHECK(cudaEventRecord(s.consumed, compute_));
  }

  void fill_normal(float* out, size_t count, uint64_t first_index,
                   const RandomKey& key) override {
    kernels::fill_normal(out, count, first_index, key, compute_);
  }

  void reparameterize_kl_forward(const float* encoder_out, const float* eps, int rows, int latent,
                                 float* z, float* row_kl, float* row_log_ratio) override {
    kernels::reparameterize_kl_forward(encoder_out, eps, rows, latent, z, row_kl, row_log_ratio,
                                       compute_);
  }
  void reparameterize_kl_backward(const float* dz, const float* encoder_out, const float* eps,
                                  int rows, int latent, float kl_scale,
                                  float* d_encoder_out) override {
    kernels::reparameterize_kl_backward(dz, encoder_out, eps, rows, latent, kl_scale,
                                        d_encoder_out, compute_);
  }
  void bernoulli_logprob_and_grad(const float* x, const float* logits, int rows, int cols,
                                  float grad_scale, float* dlogits,
                                  float* row_logprob) override {
    kernels::bernoulli_logprob_and_grad(x, logits, rows, cols, grad_scale, dlogits, row_logprob,
                                        compute_);
  }
  void accumulate_elbo(const float* row_logprob, const float* row_kl, int rows,
                       double* accumulator) override {
    kernels::accumulate_elbo(row_logprob, row_kl, rows, accumulator, compute_);
  }
  void adam_step(float* params, const float* grads, float* m, float* v, size_t count,
                 const AdamStep& step) override {
    kernels::adam_step(params, grads, m, v, count, step, compute_);
  }

 private:
  struct Staging {
    uint8_t* host = nullptr;    // pinned
    uint8_t* device = nullptr;
    size_t capacity = 0;
    cudaEvent_t copied = nullptr;    // the copy into `device` has finished
    cudaEvent_t consumed = nullptr;  // the kernel reading `device` has finished
  };

  int device_ = 0;
  cudaDeviceProp properties_{};
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::array<Staging, 2> staging_{};
  size_t next_staging_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend() {
  std::string why_not;
  if (!cuda_device_present(&why_not)) throw Error(why_not);
  return std::make_unique<CudaBackend>();
}

}  // namespace cuvae
