// The CUDA backend: cuBLAS GEMMs, the fused kernels of kernels/, Philox draws
// on the device. Declared only in builds with CUDA (CUVAE_HAVE_CUDA).
#pragma once

#include <memory>
#include <string>

#include "cuvae/backends/backend.h"

namespace cuvae {

// True when the CUDA runtime finds at least one device. Otherwise false, with
// why_not saying why in one line ("no CUDA device: CUDA driver version is
// insufficient for CUDA runtime version" on machines without a GPU driver).
bool cuda_device_present(std::string* why_not);

// Throws cuvae::Error when no device can be used.
std::unique_ptr<Backend> make_cuda_backend();

}  // namespace cuvae
