// vae info: the build's and this machine's facts (version, commit, CUDA, the
// CPU backend's threads, BLAS, GEMM kernels and OpenMP waiting).
#include <iostream>
#include <string>

#include "cuvae/backends/backend.h"
#include "cuvae/backends/cpu/cpu_features.h"
#include "cuvae/backends/cpu/cpu_gemm.h"
#include "cuvae/backends/cpu/openmp_wait.h"
#include "cuvae/build_info.h"
#include "cuvae/cli/commands.h"

namespace cuvae {

namespace {

int run_info() {
  std::cout << "cuvae " << CUVAE_VERSION << " (commit " << CUVAE_GIT_COMMIT << ")\n";
#if CUVAE_HAVE_CUDA
  std::cout << "CUDA backend: compiled in\n";
#else
  std::cout << "CUDA backend: not compiled in\n";
#endif
  std::string why_not;
  if (cuda_available(&why_not)) {
    std::cout << "CUDA device: " << make_backend("cuda")->description() << "\n";
  } else {
    std::cout << "CUDA device: none (" << why_not << ")\n";
  }
  std::cout << "CPU backend: " << make_backend("cpu")->description() << "\n";
  const BlasKernelReport gemm = cpu_gemm_kernel();
  std::cout << "CPU vector ISA: " << vector_isa_name(gemm.cpu_isa) << "\n";
  std::cout << "GEMM kernel: " << gemm.kernel << "\n";
  std::cout << "GEMM shapes: " << cpu_gemm_shapes() << "\n";
  if (!gemm.below_cpu.empty()) std::cout << "GEMM speed: " << gemm.below_cpu << "\n";
  std::cout << "OpenMP waiting: " << openmp_wait_description() << "\n";
  std::cout.flush();
  return 0;
}

}  // namespace

Command add_info_command(CLI::App& app) {
  CLI::App* info_cmd = app.add_subcommand("info", "Build facts: version, commit, CUDA, threads, BLAS");
  return {info_cmd, [] { return run_info(); }};
}

}  // namespace cuvae
