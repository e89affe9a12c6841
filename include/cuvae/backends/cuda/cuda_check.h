// Checked CUDA, cuBLAS calls: a failure throws cuvae::Error naming the call,
// file:line and the library's error string. Only for .cu files.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <exception>
#include <string>

#include "cuvae/error.h"

namespace cuvae {

[[noreturn]] inline void throw_cuda_error(const char* call, const char* file, int line,
                                          const std::string& what) {
  throw Error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + what);
}

// For calls that release resources (destructors, deallocate), which must
// not throw: the first failure in the process is printed as one warning line
// (it is usually an earlier asynchronous error surfacing; later ones would
// repeat it), and none while an exception unwinds: that error is the one
// the user gets, in one line.
inline void warn_cuda_error_once(const char* call, const char* file, int line, cudaError_t status) {
  static std::atomic<bool> warned{false};
  if (std::uncaught_exceptions() > 0 || warned.exchange(true)) return;
  std::fprintf(stderr, "vae: warning: %s failed at %s:%d: %s: %s\n", call, file, line,
               cudaGetErrorName(status), cudaGetErrorString(status));
}

}  // namespace cuvae

#define CUVAE_CUDA_CHECK(call)                                                          \
  do {                                                                                  \
    const cudaError_t cuvae_status_ = (call);                                           \
    if (cuvae_status_ != cudaSuccess) {                                                 \
      ::cuvae::throw_cuda_error(#call, __FILE__, __LINE__,                              \
                                std::string(cudaGetErrorName(cuvae_status_)) + ": " +   \
                                    cudaGetErrorString(cuvae_status_));                 \
    }                                                                                   \
  } while (0)

#define CUVAE_CUBLAS_CHECK(call)                                                        \
  do {                                                                                  \
    const cublasStatus_t cuvae_status_ = (call);                                        \
    if (cuvae_status_ != CUBLAS_STATUS_SUCCESS) {                                       \
      ::cuvae::throw_cuda_error(#call, __FILE__, __LINE__,                              \
                                std::string(cublasGetStatusName(cuvae_status_)) + ": " + \
                                    cublasGetStatusString(cuvae_status_));              \
    }                                                                                   \
  } while (0)

#define CUVAE_CUDA_WARN(call)                                                     \
  do {                                                                           \
    const cudaError_t cuvae_status_ = (call);                                    \
    if (cuvae_status_ != cudaSuccess) {                                          \
      ::cuvae::warn_cuda_error_once(#call, __FILE__, __LINE__, cuvae_status_);   \
    }                                                                            \
  } while (0)

// After a kernel launch: launch-configuration errors surface here.
#define CUVAE_KERNEL_CHECK() CUVAE_CUDA_CHECK(cudaGetLastError())
