// The CUDA backend lives in its own shared module, libcuvae_cuda.so, built
// beside the executables and opened (dlopen) only when a CUDA device may be
// used. Why: cuBLAS and cuBLASLt run ~0.7 s of static initializers whenever
// they are loaded, so linking them into `vae` cost every command that much,
// GPU or not (`vae --help` took 0.6-1.1 s on a 2-core machine without a GPU,
// 0.02 s without them), and every test process of a CUDA build with it.
//
// The module's symbols that the core needs are these two, reached through
// one C entry point; what the module needs of the core (the Backend base
// class, the step's branch records, cuvae::Error) it finds in the executable,
// which exports its symbols for that (CMake: ENABLE_EXPORTS).
#pragma once

#include <string>

namespace cuvae {

class Backend;

struct CudaModuleApi {
  int version;  // kCudaModuleApiVersion of the module's build
  // True when the CUDA runtime finds a device; otherwise why not, one line.
  bool (*device_present)(std::string* why_not);
  // A new CUDA backend (the caller owns it); throws cuvae::Error.
  Backend* (*make_backend)();
};

constexpr int kCudaModuleApiVersion = 2;  // 2: Backend::make_step_batch

// The module's file name, and its one exported symbol.
constexpr const char* kCudaModuleFile = "libcuvae_cuda.so";
constexpr const char* kCudaModuleEntry = "cuvae_cuda_module";

// The core's side (src/backends/cuda_module.cpp). Opens the module once per
// process; null when it cannot be opened, with why in *error. Does not look
// for a driver first: cuda_available() does that (backend.h).
const CudaModuleApi* open_cuda_module(std::string* error);

}  // namespace cuvae
