// Checked CUDA, cuBLAS calls: a failure throws cuvae::Error naming the call,
// file:line and the library's error string. Only for .cu files.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "cuvae/error.h"

namespace cuvae {

[[noreturn]] inline void throw_cuda_error(const char* call, const char* file, int line,
                                          const std::string& what) {
  throw Error(std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " + what);
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

// After a kernel launch: launch-configuration errors surface here.
#define CUVAE_KERNEL_CHECK() CUVAE_CUDA_CHECK(cudaGetLastError())
