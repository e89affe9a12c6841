// Choosing a backend: "auto", "cpu" or "cuda".
#include "cuvae/backends/backend.h"

#include <dlfcn.h>

#include <chrono>

#include "cuvae/backends/cpu/cpu_backend.h"
#include "cuvae/backends/cuda/cuda_module.h"
#include "cuvae/error.h"

namespace cuvae {

void Backend::dense_forward(const float* x, const float* w, const float* b, int rows, int in,
                            int out, Activation act, float* y, void* mask) {
  (void)mask;  // the unfused layer reads its own output in the backward pass
  gemm(false, false, rows, out, in, 1.0f, x, in, w, out, 0.0f, y, out);
  bias_activation_forward(y, b, rows, out, act);
}

void Backend::dense_backward_input(const float* da, const float* w, int rows, int in, int out,
                                   const float* x, const void* x_mask, Activation x_act,
                                   float* dx, float* x_dbias) {
  (void)x_mask;
  // dx = da W^T (rows x out times out x in).
  gemm(false, true, rows, in, out, 1.0f, da, out, w, out, 0.0f, dx, in);
  activation_backward_bias_grad(dx, x, x_dbias, rows, in, x_act, nullptr);
}

double Backend::device_seconds(const std::function<void()>& work) {
  synchronize();
  const auto start = std::chrono::steady_clock::now();
  work();
  synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

#if CUVAE_HAVE_CUDA
namespace {

// Whether the NVIDIA driver's library is there. The CUDA runtime opens it
// itself; looking for it first spares loading the CUDA module (~0.7 s, see
// cuda_module.h) on machines without a GPU. Kept open when found.
bool cuda_driver_present(std::string* why_not) {
  static std::string why;
  static const bool present = [] {
    if (::dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL) != nullptr) return true;
    const char* text = ::dlerror();
    why = "no CUDA device: no NVIDIA driver (" + std::string(text != nullptr ? text : "libcuda.so.1 not found") + ")";
    return false;
  }();
  if (!present) *why_not = why;
  return present;
}

}  // namespace
#endif

bool cuda_available(std::string* why_not) {
#if CUVAE_HAVE_CUDA
  if (!cuda_driver_present(why_not)) return false;
  const CudaModuleApi* cuda = open_cuda_module(why_not);
  return cuda != nullptr && cuda->device_present(why_not);
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
  // cuda_available() opened the module.
  return std::unique_ptr<Backend>(open_cuda_module(nullptr)->make_backend());
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
