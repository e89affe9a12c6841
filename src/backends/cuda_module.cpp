// Opening the CUDA backend's module (cuda_module.h says why it is one).
#include "cuvae/backends/cuda/cuda_module.h"

#include <dlfcn.h>

#include <mutex>

#include "cuvae/io/executable_dir.h"

namespace cuvae {

const CudaModuleApi* open_cuda_module(std::string* error) {
  static std::once_flag once;
  static const CudaModuleApi* api = nullptr;
  static std::string why;
  std::call_once(once, [] {
    const std::string dir = executable_dir();
    const std::string path = (dir.empty() ? std::string(".") : dir) + "/" + kCudaModuleFile;
    // Kept open for the process's life: the backend's code is in it.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* text = ::dlerror();
      why = "this build's CUDA backend cannot be loaded: " + std::string(text != nullptr ? text : path);
      return;
    }
    using Entry = const CudaModuleApi* (*)();
    const auto entry = reinterpret_cast<Entry>(::dlsym(handle, kCudaModuleEntry));
    if (entry == nullptr) {
      why = path + " has no " + kCudaModuleEntry + " (not cuvae's CUDA module)";
      return;
    }
    const CudaModuleApi* candidate = entry();
    if (candidate == nullptr || candidate->version != kCudaModuleApiVersion) {
      why = path + " is of another build of cuvae (module interface " +
            std::to_string(candidate != nullptr ? candidate->version : 0) + ", this build's " +
            std::to_string(kCudaModuleApiVersion) + "): rebuild both";
      return;
    }
    api = candidate;
  });
  if (api == nullptr && error != nullptr) *error = why;
  return api;
}

}  // namespace cuvae
