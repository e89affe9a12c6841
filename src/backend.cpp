// Choosing a backend: "auto", "cpu" or "cuda".
#include "cuvae/backend.h"

#include "cuvae/cpu_backend.h"
#include "cuvae/error.h"
#if CUVAE_HAVE_CUDA
#include "cuvae/cuda_backend.h"
#endif

namespace cuvae {

bool cuda_available(std::string* why_not) {
#if CUVAE_HAVE_CUDA
  return cuda_device_present(why_not);
#else
  *why_not = "this build has no CUDA backend (nvcc was not found when it was configured)";
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device != "cuda" && device != "auto") {
    throw Error("--device must be auto, cpu or cuda, got '" + device + "'");
  }
  std::string why_not;
  if (!cuda_available(&why_not)) {
    if (device == "auto") return make_cpu_backend();
    throw Error("--device cuda: " + why_not);
  }
#if CUVAE_HAVE_CUDA
  return make_cuda_backend();
#else
  return make_cpu_backend();  // unreachable: cuda_available() is false without CUDA
#endif
}

std::unique_ptr<Backend> open_backend(const std::string& device, std::ostream& out) {
  std::unique_ptr<Backend> backend = make_backend(device);
  out << "device: " << backend->description();
  std::string why_not;
  if (device == "auto" && backend->name() == "cpu" && !cuda_available(&why_not)) {
    out << " (auto: " << why_not << ")";
  }
  out << "\n";
  return backend;
}

}  // namespace cuvae
